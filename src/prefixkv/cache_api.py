"""What a model engine needs from a prefix cache: the PrefixCache protocol and its records."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, Protocol

import torch

from prefixkv.layout import KVLayout


class Lease:
    """The longest cached prefix of a prompt, pinned until released.

    Reading copies KV out of the cache, so the caller owns what it reads and may hand it to a
    model that grows it: ``copy_to(out)`` writes into a buffer the caller already has (no
    allocation), ``kv`` returns new tensors. Release with ``release()`` or a ``with`` block
    (idempotent, thread-safe); reading after release raises RuntimeError.
    """

    __slots__ = ("_lock", "_read", "_release", "device", "layout", "namespace", "num_tokens")

    def __init__(
        self,
        num_tokens: int,
        namespace: Hashable,
        layout: KVLayout,
        device: torch.device,
        read: Callable[[torch.Tensor], None],
        release: Callable[[], None],
    ) -> None:
        self.num_tokens = num_tokens
        self.namespace = namespace
        self.layout = layout
        self.device = device
        self._read = read
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    @property
    def released(self) -> bool:
        return self._release is None

    def copy_to(self, out: torch.Tensor) -> None:
        """Write the cached KV into ``out[:, :, :, :num_tokens]``.

        ``out``: ``[num_layers, 2, num_kv_heads, T >= num_tokens, head_dim]`` (2 = keys,
        values) with the cache's dtype and device. Fastest when ``out`` is contiguous and T is
        a multiple of the block size. Raises ValueError on a mismatched buffer.
        """
        lay = self.layout
        expected = (lay.num_layers, 2, lay.num_kv_heads, lay.head_dim)
        shape = tuple(out.shape)
        if len(shape) != 5 or shape[:3] + shape[4:] != expected or shape[3] < self.num_tokens:
            raise ValueError(
                f"out has shape {shape}; expected [{lay.num_layers}, 2, {lay.num_kv_heads}, "
                f">= {self.num_tokens}, {lay.head_dim}]"
            )
        if out.dtype != lay.dtype or out.device != self.device:
            raise ValueError(
                f"out is {out.dtype} on {out.device}; the cache holds {lay.dtype} on {self.device}"
            )
        if self.released:
            raise RuntimeError("this lease was released; its blocks may be gone")
        if self.num_tokens:
            self._read(out)

    @property
    def kv(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """New tensors: one ``(keys, values)`` pair of ``[num_kv_heads, num_tokens,
        head_dim]`` per layer. Each access copies again."""
        lay = self.layout
        data = torch.empty(
            (lay.num_layers, 2, lay.num_kv_heads, self.num_tokens, lay.head_dim),
            dtype=lay.dtype,
            device=self.device,
        )
        self.copy_to(data)
        return tuple((data[layer, 0], data[layer, 1]) for layer in range(lay.num_layers))

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
