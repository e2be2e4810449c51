"""Giving memory the process has freed back to the operating system.

glibc's allocator keeps what a process frees in its arenas for reuse, and returns to the
system only what lies at the top of a heap. A server that loads a model and packs its
weights, then runs for hours on several threads, holds freed memory it may never reuse:

- right after ``Engine.from_pretrained`` (the weights loaded, then packed for the native
  kernel, the plain copies freed), a large share of RSS is free but held;
- under ``prefixkv bench soak`` the server's RSS rose in steps at random minutes (an arena
  of another thread reaching a new high-water mark with a promotion's record buffers), flat
  in between: not a leak, but not what a user should see either.

:func:`release_free_heap` asks glibc to return every free page (``malloc_trim(0)``, which
since glibc 2.8 also releases free pages inside the heaps, not only at their tops); the
server calls it once after loading and then every ``interval`` seconds
(:class:`HeapTrimmer`). What it costs later: pages freed here and needed again are faulted
back in (a prefill chunk's temporaries: a few thousand pages, a few ms, once per interval).
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("prefixkv.heap")


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS). Looked
    up among the process's own symbols (``ctypes.util.find_library`` would run ldconfig)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim_: Callable[[int], int] = trim
    return trim_


def release_free_heap() -> bool:
    """Return the C heap's free pages to the system; True if any were (glibc only; False
    elsewhere). Thread-safe (glibc locks each arena while it trims it)."""
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))


class HeapTrimmer:
    """Calls :func:`release_free_heap` every ``interval`` seconds on a daemon thread of its
    own, from :meth:`start` until :meth:`stop`."""

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"a trim interval must be > 0 seconds, got {interval!r}")
        self.interval = interval
        self.trims = 0
        """Calls made so far."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefixkv-heap", daemon=True)

    def start(self) -> HeapTrimmer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and wait for the thread (at most one call in flight). Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            release_free_heap()
            self.trims += 1
