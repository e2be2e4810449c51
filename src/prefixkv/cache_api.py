"""What a model engine needs from a prefix cache: the PrefixCache protocol and its records."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, Protocol

import torch


class Lease:
    """Cached KV for the longest cached prefix of a prompt, pinned until released.

    ``kv[layer]`` is a ``(keys, values)`` pair of ``[num_kv_heads, num_tokens, head_dim]``
    tensors: a private copy, so the caller may hand it to a model that grows it. Use it as a
    context manager or call ``release()`` (idempotent, thread-safe).
    """

    __slots__ = ("_lock", "_release", "kv", "namespace", "num_tokens")

    def __init__(
        self,
        num_tokens: int,
        kv: tuple[tuple[torch.Tensor, torch.Tensor], ...],
        namespace: Hashable,
        release: Callable[[], None],
    ) -> None:
        self.num_tokens = num_tokens
        self.kv = kv
        self.namespace = namespace
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    @property
    def released(self) -> bool:
        return self._release is None

    def release(self) -> None:
        """Unpin the blocks. Later calls do nothing."""
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"Lease(num_tokens={self.num_tokens}, namespace={self.namespace!r}, {state})"


class CacheStats(NamedTuple):
    """A snapshot of a prefix cache: lookup counters, then occupancy."""

    lookups: int
    lookup_tokens: int
    hit_tokens: int
    full_hits: int
    partial_hits: int
    misses: int
    stored_blocks: int
    """Blocks copied into the cache by ``store``."""
    dropped_blocks: int
    """Blocks ``store`` could not keep because every other block was pinned."""
    evicted_blocks: int
    blocks_used: int
    blocks_free: int
    blocks_total: int
    blocks_pinned: int
    block_size: int
    bytes_used: int
    capacity_bytes: int
    """Bytes of the preallocated pool: the most the cache ever holds."""

    @property
    def hit_rate(self) -> float:
        """Cached tokens / looked-up tokens (0.0 before any lookup)."""
        return self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0


class PrefixCache(Protocol):
    """The cache interface the engine and server use; PrefixKVCache and NullCache implement it."""

    block_size: int

    def lookup(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> Lease:
        """Pin and return the longest cached prefix of ``tokens``. Raises on malformed tokens."""
        ...

    def store(self, tokens: Sequence[int] | Any, kv: Any, namespace: Hashable = None) -> int:
        """Cache the full blocks of ``tokens`` not cached yet; return how many were stored.
        Never raises for lack of space; raises on malformed input and then changes nothing."""
        ...

    def reset(self) -> int:
        """Evict every unpinned block; return how many."""
        ...

    def stats(self) -> CacheStats: ...

    def check_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant."""
        ...
