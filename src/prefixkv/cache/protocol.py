"""What a model engine needs from a prefix cache: the PrefixCache protocol and its records."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple, Protocol

from prefixkv.cache.lease import Lease
from prefixkv.cache.pool import BlockPool
from prefixkv.cache.table import BlockTable
from prefixkv.tokens import TokenBytes


class CacheStats(NamedTuple):
    """A snapshot of a prefix cache: the index's counters (same names and meaning as
    :class:`~prefixkv.index.IndexStats`), then what only a cache has: dropped blocks and
    occupancy. Every count of blocks ends in ``_blocks``; the server's ``/v1/cache/stats``
    returns these fields and ``/metrics`` exports them as ``prefixkv_cache_<field>``."""

    queries: int
    """Calls to ``lookup``."""
    query_tokens: int
    """Tokens passed to ``lookup``."""
    hit_tokens: int
    """Tokens found cached (whole blocks)."""
    full_hits: int
    partial_hits: int
    misses: int
    inserted_blocks: int
    """Blocks copied into the cache by ``store``."""
    evicted_blocks: int
    dropped_blocks: int
    """Blocks ``store`` could not keep because every other block was pinned."""
    used_blocks: int
    free_blocks: int
    total_blocks: int
    pinned_blocks: int
    """Blocks held by leases (requests running on them): never evicted."""
    reserved_blocks: int
    """Blocks taken from the pool but not indexed: running sequences' own blocks and blocks
    being filled. Conservation: ``free_blocks + used_blocks + reserved_blocks ==
    total_blocks`` in every snapshot."""
    block_size: int
    used_bytes: int
    capacity_bytes: int
    """Bytes of the preallocated pool: the most the cache ever holds."""

    @property
    def hit_rate(self) -> float:
        """Hit tokens / query tokens (0.0 before any lookup)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


class WriteThrough(Protocol):
    """Told of blocks as they become cached, to copy them below RAM (see
    :mod:`prefixkv.tiers`). Called outside the cache's lock, while the blocks are reserved or
    pinned: their data is stable until the call returns, not after, so an implementation
    copies what it keeps before returning and does slow work elsewhere."""

    def write(
        self, namespace: Hashable, tokens: TokenBytes, first_block: int, blocks: Sequence[int]
    ) -> None:
        """``blocks`` (pool ids) hold the KV of blocks ``first_block, first_block + 1, ...``
        of ``tokens`` in ``namespace``."""
        ...


class NoWriteThrough:
    """The WriteThrough of a cache with nothing below RAM: does nothing."""

    def write(
        self, namespace: Hashable, tokens: TokenBytes, first_block: int, blocks: Sequence[int]
    ) -> None:
        return None


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

    def promote(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> dict[str, int]:
        """Bring the blocks of ``tokens`` held below RAM (disk, Redis) back into RAM ahead of
        ``lookup``/``open`` (a prefetch, e.g. while the request waits in a queue); return
        blocks found by tier name. A cache with nothing below RAM does nothing and returns
        ``{}``. Pins nothing: what it brings may be evicted again before the lookup."""
        ...

    def reset(self) -> int:
        """Evict every unpinned block; return how many."""
        ...

    def reset_tenant(self, tenant: Hashable) -> int:
        """Evict every unpinned block of ``tenant``'s namespaces (see
        :class:`~prefixkv.cache.tenants.Namespace`); return how many."""
        ...

    def stats(self) -> CacheStats:
        """The whole cache."""
        ...

    def tenant_stats(self, tenant: Hashable) -> CacheStats:
        """``tenant``'s counters and blocks; capacity and free blocks are the pool's."""
        ...

    def check_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant."""
        ...


class BlockStore(PrefixCache, Protocol):
    """A prefix cache whose pool also holds running sequences' KV (what a batching engine
    needs). PrefixKVCache shares matched blocks and indexes new ones as they fill;
    NullCache (with a capacity) gives private blocks only. See :mod:`prefixkv.cache.table`."""

    @property
    def pool(self) -> BlockPool | None:
        """The tensors KV is read from and written to: ``data`` is ``[layers, 2, kv_heads,
        blocks, block_size, head_dim]`` (None: no pool, so no running sequences)."""
        ...

    def open(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        """A table over the longest cached prefix of ``tokens`` (pinned until ``close``).
        Counts one lookup. Raises TypeError/ValueError on malformed tokens."""
        ...

    def grow(self, table: BlockTable, num_tokens: int) -> bool:
        """Room for ``num_tokens`` tokens in all, or False and nothing allocated."""
        ...

    def commit(self, table: BlockTable, tokens: TokenBytes) -> int:
        """Index the table's full blocks of ``tokens`` not indexed yet; return how many."""
        ...

    def close(self, table: BlockTable) -> None:
        """Unpin and free what the table holds. Idempotent."""
        ...

    def cached(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> int:
        """Tokens of ``tokens`` cached now; records and pins nothing."""
        ...

    def available_blocks(self) -> int:
        """Free plus evictable blocks: what a new sequence could get now."""
        ...
