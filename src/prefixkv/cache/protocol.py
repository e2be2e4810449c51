"""What the engine, server and CLI need from a prefix cache: the BlockStore protocol and its
records."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from prefixkv.cache.layout import KVGeometry
from prefixkv.cache.pins import PrefixPin
from prefixkv.cache.pool import BlockPool
from prefixkv.cache.table import BlockTable
from prefixkv.tokens import TokenBytes

if TYPE_CHECKING:
    from prefixkv.cache.explain import Explanation
    from prefixkv.tiers.protocol import TierCounters


class CacheStats(NamedTuple):
    """A snapshot of a prefix cache: the index's counters (same names and meaning as
    :class:`~prefixkv.index.IndexStats`), then what only a cache has: dropped blocks and
    occupancy. Every count of blocks ends in ``_blocks``; the server's ``/v1/cache/stats``
    returns these fields and ``/metrics`` exports them as ``prefixkv_cache_<field>``."""

    queries: int
    """Lookups (``open``, or ``lookup`` on a PrefixKVCache)."""
    query_tokens: int
    """Tokens looked up."""
    hit_tokens: int
    """Tokens found cached (whole blocks)."""
    full_hits: int
    partial_hits: int
    misses: int
    inserted_blocks: int
    """Blocks indexed (by ``commit``, or ``store`` on a PrefixKVCache)."""
    evicted_blocks: int
    dropped_blocks: int
    """Blocks ``reserve`` (or ``store``) could not keep because every other block was pinned
    or protected."""
    used_blocks: int
    free_blocks: int
    total_blocks: int
    pinned_blocks: int
    """Blocks pinned by open tables (requests running on them) and by pinned prefixes
    (``POST /v1/cache/pin``): never evicted."""
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


class TierStats(NamedTuple):
    """One tier below RAM: what lookups found in it, then its own counters (see
    :mod:`prefixkv.tiers`)."""

    tier: str
    hit_blocks: int
    """Verified blocks it supplied to lookups."""
    missed_lookups: int
    """Lookups that asked it and got no block."""
    promoted_blocks: int
    """Blocks of its put back into RAM."""
    verification_failures: int
    """Records rejected on load (seal, checksum, tokens, name, model, format), never served."""
    deadline_stops: int
    """Promotions that stopped reading it at the deadline."""
    counters: TierCounters


class RamOnly:
    """The tier side of :class:`BlockStore` for a cache with nothing below RAM (the RAM cache
    on its own, the null cache): no promotion, no tier stats, nothing to flush or close."""

    def promote(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> dict[str, int]:
        """Nothing is held below RAM here: does nothing; returns no counts."""
        return {}

    def tier_stats(self) -> list[TierStats]:
        """No tier below RAM here: none."""
        return []

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing is queued below RAM: True at once."""
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Nothing below RAM to write or close."""
        return None


class BlockStore(Protocol):
    """The one cache interface: the engine's runners, the server and the CLI use only this.
    KV lives in pool blocks; a request's blocks are named by a :class:`BlockTable` (see
    :mod:`prefixkv.cache.table`) from ``open`` to ``close``. Implemented by PrefixKVCache
    (RAM), TieredCache (RAM with disk and Redis below) and NullCache (caches nothing)."""

    @property
    def geometry(self) -> KVGeometry:
        """The KV's layout and block size (the composition root decides them)."""
        ...

    @property
    def block_size(self) -> int:
        """``geometry.block_size``: tokens per block."""
        ...

    @property
    def pool(self) -> BlockPool | None:
        """The tensors KV is read from and written to: ``data`` is ``[layers, 2, kv_heads,
        blocks, block_size, head_dim]`` (None: no pool, so no running sequences)."""
        ...

    def open(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        """A table over the longest cached prefix of ``tokens`` (pinned until ``close``).
        Counts one lookup. Raises TypeError/ValueError on malformed tokens."""
        ...

    def hold(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        """A table over the cached prefix of ``tokens`` (pinned until ``close``), like
        ``open`` but for work that is not a request (the exactness canary): counts no
        lookup, records no use, reads no lower tier. Empty ``tokens``: an empty table, for
        private blocks (``grow``) that are never indexed."""
        ...

    def discard(
        self, tokens: Sequence[int] | Any, first_block: int, namespace: Hashable = None
    ) -> int:
        """Stop serving block ``first_block`` of the cached prefix of ``tokens`` and every
        block after or below it (found bad): unindex and free them in RAM; return how many.
        Lower tiers keep their own copies (verified on load). Raises PinnedBlocksError,
        changing nothing, while a running sequence holds any of them."""
        ...

    def grow(self, table: BlockTable, num_tokens: int) -> bool:
        """Room for ``num_tokens`` tokens in all, for a running sequence's KV (evicting any
        tenant's unpinned blocks), or False and nothing allocated."""
        ...

    def reserve(self, table: BlockTable, num_tokens: int) -> int:
        """Room to cache up to ``num_tokens`` tokens, taken as a store takes it: evicting
        only what the table's tenant may evict (see :mod:`prefixkv.cache.tenants`), as many
        leading blocks as that allows, the rest counted as dropped. Returns the blocks the
        table holds now (a cache that keeps nothing takes none)."""
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

    def promote(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> dict[str, int]:
        """Bring the blocks of ``tokens`` held below RAM (disk, Redis) back into RAM ahead of
        ``open`` (a prefetch, e.g. while the request waits in a queue); return blocks found
        by tier name. A cache with nothing below RAM does nothing and returns ``{}``. Pins
        nothing: what it brings may be evicted again before the ``open``."""
        ...

    def pin_prefix(
        self, tokens: Sequence[int] | Any, namespace: Hashable, ttl_seconds: float
    ) -> PrefixPin:
        """Keep the cached full blocks of ``tokens`` resident (never evicted) for
        ``ttl_seconds`` or until ``unpin_prefix``, within the limits of
        :mod:`prefixkv.cache.pins`; PinRefused (its ``code`` says why) when nothing is
        cached or a limit forbids it."""
        ...

    def unpin_prefix(self, pin_id: str, tenant: Hashable) -> PrefixPin | None:
        """End ``tenant``'s pin ``pin_id`` now; None when it holds no such pin."""
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

    def tier_stats(self) -> list[TierStats]:
        """One record per tier below RAM, in order (none for a RAM-only cache)."""
        ...

    def explain(
        self, tokens: Sequence[int] | Any, namespace: Hashable = None, window: int = 64
    ) -> Explanation:
        """Why ``tokens`` would or would not hit now, in ``namespace`` (see
        :mod:`prefixkv.cache.explain`), with up to ``window`` tokens of the nearest cached
        continuation. Records, pins, promotes and changes nothing."""
        ...

    def miss_tokens(self) -> dict[str, int]:
        """Prompt tokens of ``open``ed requests that missed, by reason (every reason of
        ``MISS_REASONS``, zeros included), all tenants."""
        ...

    def tenant_miss_tokens(self, tenant: Hashable) -> dict[str, int]:
        """The same, for ``tenant``'s namespaces."""
        ...

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every block queued for lower tiers is written; False on timeout (True
        at once for a RAM-only cache)."""
        ...

    def shutdown(self, timeout: float = 30.0) -> None:
        """Write what is queued for lower tiers (up to ``timeout`` seconds) and close them;
        nothing to do for a RAM-only cache."""
        ...

    def check_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant."""
        ...
