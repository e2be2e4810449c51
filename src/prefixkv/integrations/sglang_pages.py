"""SGLang KV slot indices as prefix-index block values (no SGLang import here).

SGLang's paged allocators hand out whole pages: the ``page_size`` slots of a page are
consecutive (``first, first + 1, ...``), so one int, the page's first slot, names the page.
The adapter stores that int as the block value of the page's token block, and rebuilds the
slot tensor of a matched prefix from those ints. At ``page_size`` 1 a page is one slot.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["blocks_for", "namespace_of", "page_firsts", "page_slots"]


def page_firsts(slots: torch.Tensor, page_size: int) -> list[int]:
    """The first slot of each page of ``slots`` (a whole number of pages).

    Raises ValueError if a page's slots are not consecutive: such values could not be
    rebuilt from their first slot, and storing them would hand wrong KV to a later match.
    Checked in NumPy on a host view of the tensor (a few microseconds at any length; torch's
    per-op overhead made the same check 5x slower at 128 tokens).
    """
    if slots.dim() != 1 or slots.numel() % page_size:
        raise ValueError(
            f"value: expected a 1-D tensor of whole pages of {page_size} slots, "
            f"got shape {tuple(slots.shape)}"
        )
    host = (slots if slots.device.type == "cpu" else slots.cpu()).numpy()
    if page_size == 1:
        return host.tolist()  # type: ignore[no-any-return]
    pages = host.reshape(-1, page_size)
    firsts = pages[:, 0]
    if not ((pages - firsts[:, None]) == _offsets(page_size)).all():
        raise ValueError("value: the slots of a page must be consecutive (a paged allocator's)")
    return firsts.tolist()  # type: ignore[no-any-return]


@functools.cache
def _offsets(page_size: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.arange(page_size, dtype=np.int64)


def page_slots(firsts: Sequence[int], page_size: int, device: torch.device) -> torch.Tensor:
    """The int64 slot tensor of the pages named by ``firsts`` (the inverse of
    :func:`page_firsts`)."""
    starts = torch.tensor(firsts, dtype=torch.int64, device=device)
    if page_size == 1:
        return starts
    offsets = torch.arange(page_size, dtype=torch.int64, device=device)
    return (starts[:, None] + offsets).reshape(-1)


def namespace_of(extra_key: str | None, cache_salt: str | None) -> Hashable:
    """The prefix-index namespace of a key: SGLang keeps prefixes with a different
    ``extra_key`` (LoRA, ...) or ``cache_salt`` apart, and so does the index."""
    if extra_key is None and cache_salt is None:
        return None
    return (extra_key, cache_salt)


def blocks_for(num_tokens: int, page_size: int) -> int:
    """Whole pages that hold at least ``num_tokens`` tokens (what an eviction must free)."""
    return -(-num_tokens // page_size)
