"""SGLang KV slot indices as prefix-index block values (no SGLang import here).

SGLang's paged allocators hand out whole pages: the ``page_size`` slots of a page are
consecutive (``first, first + 1, ...``), so one int, the page's first slot, names the page.
The adapter stores that int as the block value of the page's token block, in the index's
int64 value store (:data:`prefixkv.index.INT64_VALUES`: ``array('q')`` runs), and rebuilds
the slot tensor of a matched prefix from the match's ``array('q')`` with
``torch.frombuffer``: no Python int is made per page either way. At ``page_size`` 1 a page
is one slot.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from prefixkv.index.native import native_descent_or_none

__all__ = ["blocks_for", "namespace_of", "page_firsts", "page_slots"]


def page_firsts(slots: torch.Tensor, page_size: int) -> array[int]:
    """The first slot of each page of ``slots`` (a whole number of pages), as ``array('q')``.

    Raises ValueError if a page's slots are not consecutive: such values could not be
    rebuilt from their first slot, and storing them would hand wrong KV to a later match.
    Checked in NumPy on a host view of the tensor: each slot minus its page's first slot,
    compared as bytes (one ``memcmp``) with a cached run of in-page offsets, a tile of them
    at a time. At 128 slots the check alone took about 1.4 us where an elementwise
    comparison and ``all()`` took 7 (timeit, 2 shared cores); torch ops were slower still.
    """
    if slots.dim() != 1 or slots.numel() % page_size:
        raise ValueError(
            f"value: expected a 1-D tensor of whole pages of {page_size} slots, "
            f"got shape {tuple(slots.shape)}"
        )
    host = (slots if slots.is_cpu else slots.cpu()).numpy()
    if host.dtype != np.int64 or not host.flags.c_contiguous:  # (read as contiguous int64s)
        host = np.ascontiguousarray(host, np.int64)
    if page_size == 1:  # (every slot is a page: one memcpy)
        return _int64_run(host)
    native = native_descent_or_none()
    if native is not None:  # (one C pass: 0.8 us at 128 slots where NumPy's takes 3.5)
        return native.page_firsts(host, page_size)
    return _numpy_page_firsts(host, page_size)


def _numpy_page_firsts(host: np.ndarray[Any, Any], page_size: int) -> array[int]:
    """``page_firsts`` of an int64 host array in NumPy: the reference of the native check,
    and the way without a C compiler."""
    pages = host.reshape(-1, page_size)
    firsts = pages[:, 0]
    tile = _offsets(page_size)
    step = len(tile) // (8 * page_size)  # pages per tile
    if len(pages) <= step:  # (most calls: one tile, no loop)
        consecutive = (pages - firsts[:, None]).tobytes() == tile[: 8 * host.size]
    else:
        consecutive = all(
            (part - part[:, :1]).tobytes() == tile[: 8 * part.size]
            for part in (pages[start : start + step] for start in range(0, len(pages), step))
        )
    if not consecutive:
        raise ValueError("value: the slots of a page must be consecutive (a paged allocator's)")
    return _int64_run(np.ascontiguousarray(firsts))


def _int64_run(host: np.ndarray[Any, Any]) -> array[int]:
    """A contiguous int64 host array's values as ``array('q')`` (a copy of its bytes)."""
    run = array("q")
    run.frombytes(host.data.cast("B"))  # (as bytes: frombytes reads a byte buffer)
    return run


_TILE_SLOTS = 16384
"""Slots of in-page offsets compared per ``memcmp`` (128 KiB: a few tiles stay in cache)."""


@functools.cache  # (one entry per page size: one or two per process)
def _offsets(page_size: int) -> bytes:
    """``0, 1, ..., page_size - 1`` as int64 bytes, repeated for ``_TILE_SLOTS`` slots (at
    least one page)."""
    pages = max(1, _TILE_SLOTS // page_size)
    return np.tile(np.arange(page_size, dtype=np.int64), pages).tobytes()


def page_slots(firsts: array[int], page_size: int, device: torch.device) -> torch.Tensor:
    """The int64 slot tensor of the pages named by ``firsts`` (an ``array('q')``, which the
    tensor shares at page size 1 on the CPU: a match's values are its own and never
    change; the inverse of :func:`page_firsts`)."""
    if not firsts:  # (torch.frombuffer refuses an empty buffer)
        return torch.empty((0,), dtype=torch.int64, device=device)
    starts = torch.frombuffer(firsts, dtype=torch.int64)
    if page_size > 1:
        starts = (starts[:, None] + _page_offsets(page_size)).reshape(-1)
    return starts if device.type == "cpu" else starts.to(device)


@functools.cache  # (one entry per page size)
def _page_offsets(page_size: int) -> torch.Tensor:
    """``0, 1, ..., page_size - 1`` (int64, CPU): a page's slots past its first."""
    return torch.arange(page_size, dtype=torch.int64)


def namespace_of(extra_key: str | None, cache_salt: str | None) -> Hashable:
    """The prefix-index namespace of a key: SGLang keeps prefixes with a different
    ``extra_key`` (LoRA, ...) or ``cache_salt`` apart, and so does the index."""
    if extra_key is None and cache_salt is None:
        return None
    return (extra_key, cache_salt)


def blocks_for(num_tokens: int, page_size: int) -> int:
    """Whole pages that hold at least ``num_tokens`` tokens (what an eviction must free)."""
    return -(-num_tokens // page_size)
