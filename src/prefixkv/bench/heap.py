"""A pre-faulted C heap, so that benchmark timings measure work rather than page faults.

Every subject of the index benchmark allocates with the C allocator (CPython's buffers,
NumPy, PyTorch). A long insert keeps new memory (labels, value tensors), and on a fresh heap
each new page is a page fault on first touch: on a VM that can triple an insert's time and
make it vary from run to run with the heap's history, more for whichever subject allocates
more. :func:`prefault_heap` makes glibc serve allocations below 32 MiB from its heap, touches
``total`` bytes of it once and keeps them: later allocations reuse resident pages, for every
subject alike, as in a long-running engine.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit platforms
_CHUNK = 16 << 20


def prefault_heap(total: int = 1 << 30) -> bool:
    """Touch ``total`` bytes of the C heap and keep them resident for later allocations.

    Returns False (and changes nothing) where the C library is not glibc. Costs about a
    second and ``total`` bytes of resident memory for the rest of the process.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt, malloc, free = libc.mallopt, libc.malloc, libc.free
    except (OSError, AttributeError, TypeError):
        return False
    malloc.restype = ctypes.c_void_p
    free.argtypes = [ctypes.c_void_p]
    # mallopt returns 1 on success: never give memory back to the kernel, and serve blocks
    # below 32 MiB from the heap (not from fresh mmaps, which fault again every time).
    if not (
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    ):
        return False
    blocks = []
    for _ in range(total // _CHUNK):
        block = malloc(_CHUNK)
        if not block:
            break
        ctypes.memset(block, 0, _CHUNK)
        blocks.append(block)
    for block in blocks:
        free(block)
    return bool(blocks)
