"""PrefixKVCache: prefix indexes (one per tenant) over a BlockPool of KV tensors, with a hard
memory bound.

The indexes own which token blocks are cached (values are pool block ids; see
:mod:`prefixkv.cache.tenants` for tenants and their shares); the pool owns the tensors and
free blocks. This facade keeps them consistent under one lock:

    blocks free + blocks indexed + blocks reserved by in-flight stores == blocks in the pool

Copies of KV data (``store``'s writes, ``lookup``'s gather) run outside the lock: the blocks
involved are either pinned in the index or reserved and not yet indexed, so neither eviction
nor another store can touch them meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from prefixkv.cache.events import BlockEvents, NoBlockEvents, RemovalCause
from prefixkv.cache.evictions import EvictionRing, LocalNamer
from prefixkv.cache.explain import Explanation, MissCounts, classify, explain_in
from prefixkv.cache.layout import GeometryOwner, KVGeometry, KVLayout
from prefixkv.cache.lease import Lease
from prefixkv.cache.pins import PinBook, PrefixPin
from prefixkv.cache.pool import BlockPool
from prefixkv.cache.protocol import CacheStats, NoWriteThrough, RamOnly, WriteThrough
from prefixkv.cache.table import BlockTable
from prefixkv.cache.tenants import Tenants, tenant_of
from prefixkv.index.policy import EvictionPolicy
from prefixkv.index.records import IndexStats, Match
from prefixkv.index.tree import PrefixIndex
from prefixkv.tokens import TOKEN_BYTES, TokenBytes, as_token_bytes, token_count

DEFAULT_CAPACITY_BYTES = 1 << 30


class PrefixKVCache(RamOnly, GeometryOwner):
    """Exact prefix KV cache for one model layout. Thread-safe; implements BlockStore.

    ``lookup`` and ``store`` copy KV out of and into the cache in one call each, outside the
    BlockStore protocol: what the property tests compare with the reference model, and
    benchmarks use to fill a cache; engines and servers go through tables (``open`` ...)."""

    def __init__(
        self,
        layout: KVLayout,
        block_size: int = 16,
        capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
        device: str | torch.device = "cpu",
        *,
        policy: EvictionPolicy | None = None,
        tenant_share: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``tenant_share``: the fraction of the pool within which a tenant's blocks cannot
        be evicted by another tenant's stores (None: tenants compete freely, LRU/LFU
        across all of them). ``clock``: what pins' deadlines are read on (see
        :mod:`prefixkv.cache.pins`). ``write_through`` (set by a tiered cache) is told of every block
        ``store`` or ``commit`` caches; blocks put back by ``restore`` are not repeated."""
        if not isinstance(layout, KVLayout):
            raise TypeError(f"layout must be a KVLayout, got {type(layout).__name__}")
        self.geometry = KVGeometry(layout, block_size)
        self.device = torch.device(device)
        block_bytes = self.geometry.block_bytes
        if not isinstance(capacity_bytes, int) or capacity_bytes < block_bytes:
            raise ValueError(
                f"capacity_bytes={capacity_bytes!r} holds no block: one block of {block_size} "
                f"tokens takes {block_bytes} bytes for this layout"
            )
        self.pool = BlockPool(self.geometry, capacity_bytes // block_bytes, self.device)
        # Recent evictions by block name, for explanations (see prefixkv.cache.explain).
        self.evictions = EvictionRing(LocalNamer(block_size))
        self.tenants = Tenants(
            block_size, policy, self.pool.num_blocks, tenant_share, self.evictions
        )
        self._misses = MissCounts()
        self.pins = PinBook(self.pool.num_blocks, self.tenants.quota, clock)
        self._lock = threading.Lock()
        self._reserved = 0
        self._dropped: dict[Hashable, int] = {}  # by tenant
        self.write_through: WriteThrough = NoWriteThrough()
        self.events: BlockEvents = NoBlockEvents()
        """Told of every block indexed and dropped, under the lock (see
        :mod:`prefixkv.cache.events`)."""

    @property
    def index(self) -> PrefixIndex:
        """The index of the tenant None (every namespace that is not a Namespace)."""
        with self._lock:
            return self.tenants.index(None)

    # --- whole-prefix copies (tests and benchmarks; see the class docstring) --------------

    def lookup(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> Lease:
        """Pin the longest cached prefix of ``tokens`` and return a Lease to read it.

        The blocks stay pinned (never evicted) until the lease is released; reading them
        (``lease.copy_to`` / ``lease.kv``) needs no lock. Counts one lookup in ``stats()``.
        Raises TypeError/ValueError on malformed tokens. O(prompt) plus O(path) pinning.
        """
        buf = as_token_bytes(tokens)
        with self._lock:
            index = self.tenants.index(tenant_of(namespace))
            match = index.match(buf, namespace)
            index.pin(match)
        blocks = match.values
        return Lease(
            match.num_tokens,
            namespace,
            self.layout,
            self.device,
            lambda out: self.pool.gather_into(blocks, out),
            lambda: self._unpin(index, match),
        )

    def store(self, tokens: Sequence[int] | Any, kv: Any, namespace: Hashable = None) -> int:
        """Cache the full blocks of ``tokens`` that are not cached yet; return how many.

        ``kv`` holds one ``(keys, values)`` pair per layer of ``[num_kv_heads, len(tokens),
        head_dim]`` (a leading batch dim of 1 is accepted), dtype and device of the cache.
        Makes room by evicting unpinned blocks, least valuable first; when only pinned blocks
        remain it stores the leading blocks that fit and counts the rest as dropped. Never
        raises for lack of space. Malformed input raises TypeError/ValueError before anything
        changes.
        """
        buf = as_token_bytes(tokens)
        layers = self.layout.check_kv(kv, token_count(buf), self.device)
        wanted = token_count(buf) // self.block_size
        index, cached, blocks = self._begin(buf, wanted, namespace)

        def fill() -> None:
            self.pool.write(blocks, layers, cached.num_tokens)
            self.write_through.write(namespace, buf, cached.num_blocks, blocks)

        return self._finish(index, buf, cached, blocks, fill)

    def restore(
        self,
        tokens: Sequence[int] | Any,
        first_block: int,
        fills: Sequence[Callable[[torch.Tensor], None]],
        namespace: Hashable = None,
    ) -> int:
        """Cache blocks ``first_block ...`` of ``tokens``, each written in place by its
        ``fills[i]`` (called with the pool block's ``[layers, 2, heads, block_size, dim]``
        view; e.g. a record decoded straight from a lower tier's buffer).

        Stores nothing (returns 0) unless exactly ``first_block`` blocks are cached now (the
        blocks before must stay the path); else like ``store``: evicts to make room, keeps
        the leading blocks that fit, returns how many it cached. The write-through is not
        told (the blocks came from below)."""
        buf = as_token_bytes(tokens)
        count = len(fills)
        end = (first_block + count) * self.block_size
        if token_count(buf) < end:
            raise ValueError(f"{count} blocks from block {first_block} need {end} tokens")
        buf = TokenBytes(buf[: end * TOKEN_BYTES])
        index, cached, blocks = self._begin(buf, count, namespace, first_block)
        fill = lambda: self.pool.fill_blocks(blocks, fills)  # noqa: E731
        return self._finish(index, buf, cached, blocks, fill)

    def _begin(
        self, buf: TokenBytes, wanted: int, namespace: Hashable, first_block: int | None = None
    ) -> tuple[PrefixIndex, Match, list[int]]:
        """Pin the cached part of ``buf`` and reserve blocks for the rest (none when the
        cached part is not ``first_block`` blocks long, if given)."""
        tenant = tenant_of(namespace)
        with self._lock:
            index = self.tenants.index(tenant)
            # Pin the cached part so that making room cannot evict the blocks we extend.
            cached = index.peek(buf, namespace)
            index.pin(cached)
            if first_block is None:
                blocks = self._reserve(wanted - cached.num_blocks, tenant)
            elif cached.num_blocks == first_block:
                blocks = self._reserve(wanted, tenant)
            else:
                blocks = []
        return index, cached, blocks

    def _finish(
        self,
        index: PrefixIndex,
        buf: TokenBytes,
        cached: Match,
        blocks: list[int],
        fill: Callable[[], None],
    ) -> int:
        """Fill the reserved ``blocks`` (outside the lock), index them after ``cached``,
        unpin ``cached``; return how many blocks the index adopted."""
        try:
            if blocks:
                fill()
        except BaseException:
            with self._lock:
                self._reserved -= len(blocks)
                self.pool.free(blocks)
            self._unpin(index, cached)
            raise
        with self._lock:
            self._reserved -= len(blocks)
            values = list(cached.values) + blocks
            mine = set(blocks)
            # Another store may have indexed some of these blocks meanwhile: free our copies.
            duplicates = [b for b in index.insert(buf, values, cached.namespace) if b in mine]
            self.pool.free(duplicates)
            # Refused blocks are a leading run (their path was indexed first): ours follow.
            first = cached.num_blocks + len(duplicates)
            self.events.stored(cached.namespace, buf, first, blocks[len(duplicates) :])
            index.unpin(cached)
        return len(blocks) - len(duplicates)

    # --- running sequences: KV written in place (see prefixkv.cache.table) ----------------

    def open(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        """A table over the longest cached prefix of ``tokens``, pinned until :meth:`close`.

        Counts one lookup in ``stats()``, like :meth:`lookup`. Raises TypeError/ValueError
        on malformed tokens."""
        buf = as_token_bytes(tokens)
        tenant = tenant_of(namespace)
        with self._lock:
            index = self.tenants.index(tenant)
            match = index.match(buf, namespace)
            index.pin(match)
            if match.num_tokens < token_count(buf):
                finding = classify(index, self.evictions, buf, namespace)
                self._misses.add(tenant, finding.miss_tokens())
        return BlockTable(namespace, list(match.values), match.num_tokens, match.num_blocks, match)

    def hold(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        """See :meth:`BlockStore.hold`: :meth:`open` without counting or using anything."""
        buf = as_token_bytes(tokens)
        with self._lock:
            index = self.tenants.index(tenant_of(namespace))
            match = index.peek(buf, namespace)
            index.pin(match)
        return BlockTable(namespace, list(match.values), match.num_tokens, match.num_blocks, match)

    def discard(
        self, tokens: Sequence[int] | Any, first_block: int, namespace: Hashable = None
    ) -> int:
        """See :meth:`BlockStore.discard`."""
        buf = as_token_bytes(tokens)
        tenant = tenant_of(namespace)
        with self._lock, self.evictions.pressure("canary", tenant):
            blocks = self.tenants.index(tenant).discard(buf, first_block, namespace)
            self._drop(blocks, "evicted")  # (KV events: removed, as any eviction)
        return len(blocks)

    def grow(self, table: BlockTable, num_tokens: int) -> bool:
        """Give ``table`` room for ``num_tokens`` tokens in all, evicting unpinned cached
        blocks if needed (any tenant's: shares bound what stores may evict, not the KV of
        running sequences). All or nothing: False (and nothing allocated or evicted) when the
        pool cannot supply every block, for the caller to preempt a sequence and retry."""
        need = self.geometry.blocks_for(num_tokens) - len(table.blocks)
        if need <= 0:
            return True
        with self._lock:
            self.pins.expire()
            shortfall = need - self.pool.num_free
            if shortfall > sum(i.evictable_blocks for _, i in self.tenants):
                return False  # evicting would lose cached blocks for nothing
            if shortfall > 0:
                with self.evictions.pressure("running", tenant_of(table.namespace)):
                    self._drop(self.tenants.evict_any(shortfall), "evicted")
            if self.pool.num_free < need:
                return False
            blocks = self.pool.allocate(need)
            self._reserved += need
        table.blocks += blocks
        table.private.update(blocks)
        return True

    def commit(self, table: BlockTable, tokens: TokenBytes) -> int:
        """Index the full blocks of ``tokens`` (the ids whose KV ``table`` holds, from the
        first) that are not indexed yet; return how many blocks the index adopted. They
        stay pinned by the table; a block another sequence indexed first stays private."""
        full = min(token_count(tokens) // self.block_size, len(table.blocks))
        if full <= table.indexed:
            return 0
        prefix = TokenBytes(tokens[: full * self.block_size * TOKEN_BYTES])
        with self._lock:
            index = self.tenants.index(tenant_of(table.namespace))
            refused = set(index.insert(prefix, table.blocks[:full], table.namespace))
            adopted = [b for b in table.blocks[table.indexed : full] if b not in refused]
            table.private.difference_update(adopted)
            self.events.stored(table.namespace, prefix, full - len(adopted), adopted)
            self._reserved -= len(adopted)
            path = index.peek(prefix, table.namespace)
            index.pin(path)
            if table.pin is not None:
                index.unpin(table.pin)
            first, table.pin, table.indexed = table.indexed, path, full
        if adopted:  # (blocks another sequence indexed first were told of by it)
            self.write_through.write(table.namespace, prefix, first, table.blocks[first:full])
        return len(adopted)

    def reserve(self, table: BlockTable, num_tokens: int) -> int:
        """Give ``table`` private blocks to cache up to ``num_tokens`` tokens, taken as
        ``store`` takes them: evicting only what the table's tenant may evict, as many leading
        blocks as that allows (the rest counted as dropped). The table's indexed blocks are
        pinned, so making room never evicts them. Returns the blocks the table holds now."""
        need = self.geometry.blocks_for(num_tokens) - len(table.blocks)
        if need > 0:
            with self._lock:
                blocks = self._reserve(need, tenant_of(table.namespace))
            table.blocks += blocks
            table.private.update(blocks)
        return len(table.blocks)

    def close(self, table: BlockTable) -> None:
        """Unpin the table's indexed blocks and free its private ones. Idempotent."""
        with self._lock:
            if table.pin is not None:
                self.tenants.index(tenant_of(table.namespace)).unpin(table.pin)
            self.pool.free(table.private)
            self._reserved -= len(table.private)
            table.pin, table.blocks, table.private, table.indexed = None, [], set(), 0

    def cached(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> int:
        """Tokens of ``tokens`` cached now (records nothing, pins nothing)."""
        buf = as_token_bytes(tokens)
        with self._lock:
            return self.tenants.index(tenant_of(namespace)).peek(buf, namespace).num_tokens

    def room_for(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> int:
        """Blocks a ``restore`` past the cached prefix of ``tokens`` could take now: free
        ones plus those its tenant may evict, not counting the prefix's own (a restore pins
        them). A bound for what to read from a lower tier; others may take some meanwhile."""
        buf = as_token_bytes(tokens)
        tenant = tenant_of(namespace)
        with self._lock:
            index = self.tenants.index(tenant)
            cached = index.peek(buf, namespace)
            index.pin(cached)  # the prefix's own blocks: not evictable for its restore
            try:
                return self.pool.num_free + self.tenants.evictable_by(tenant)
            finally:
                index.unpin(cached)

    def explain(
        self, tokens: Sequence[int] | Any, namespace: Hashable = None, window: int = 64
    ) -> Explanation:
        """Why ``tokens`` would (not) hit now, and how far (see :mod:`prefixkv.cache.explain`):
        records, pins and changes nothing. ``window``: tokens of the nearest cached
        continuation to return. Also finds the deepest match under another tenant's
        namespace (for the admin's eyes only) when the tenant's own cache has less."""
        buf = as_token_bytes(tokens)
        with self._lock:
            return explain_in(self.tenants, self.evictions, buf, namespace, window)

    def miss_tokens(self) -> dict[str, int]:
        """Served prompt tokens that missed, by reason (every tenant)."""
        with self._lock:
            return self._misses.total()

    def tenant_miss_tokens(self, tenant: Hashable) -> dict[str, int]:
        """``tenant``'s served prompt tokens that missed, by reason."""
        with self._lock:
            return self._misses.tenant(tenant)

    def available_blocks(self) -> int:
        """Blocks a new sequence could get now: free plus evictable (unpinned) ones."""
        with self._lock:
            return self.pool.num_free + sum(i.evictable_blocks for _, i in self.tenants)

    def _reserve(self, count: int, tenant: Hashable) -> list[int]:
        """Take ``count`` free blocks, evicting what ``tenant`` may evict; fewer if the rest
        is pinned or protected."""
        if count <= 0:
            return []
        self.pins.expire()
        shortfall = count - self.pool.num_free
        if shortfall > 0:
            with self.evictions.pressure("store", tenant):
                self._drop(self.tenants.evict(shortfall, tenant), "evicted")
        blocks = self.pool.allocate(count)
        if len(blocks) < count:
            self._dropped[tenant] = self._dropped.get(tenant, 0) + count - len(blocks)
        self._reserved += len(blocks)
        return blocks

    def _drop(self, evicted: Sequence[int], cause: RemovalCause) -> None:
        """Under the lock: tell the observer of blocks the indexes let go, free them."""
        if evicted:
            self.events.removed(evicted, cause)
        self.pool.free(evicted)

    def _unpin(self, index: PrefixIndex, match: Match) -> None:
        with self._lock:
            index.unpin(match)

    # --- pinned prefixes (see prefixkv.cache.pins) --------------------------------------

    def pin_prefix(
        self, tokens: Sequence[int] | Any, namespace: Hashable, ttl_seconds: float
    ) -> PrefixPin:
        """Keep the cached full blocks of ``tokens`` resident for ``ttl_seconds`` (or until
        :meth:`unpin_prefix`); PinRefused when none is cached or a limit forbids it."""
        buf = as_token_bytes(tokens)
        tenant = tenant_of(namespace)
        with self._lock:
            self.pins.expire()
            index = self.tenants.index(tenant)
            return self.pins.add(index, index.peek(buf, namespace), tenant, ttl_seconds)

    def unpin_prefix(self, pin_id: str, tenant: Hashable) -> PrefixPin | None:
        """End ``tenant``'s pin ``pin_id`` now; None when it has none by that id (expired,
        unpinned, or never its own)."""
        with self._lock:
            self.pins.expire()
            return self.pins.remove(pin_id, tenant)

    # --- maintenance ---------------------------------------------------------------------

    def reset(self) -> int:
        """Evict every unpinned block (pinned ones stay until their leases end)."""
        with self._lock, self.evictions.pressure("reset", None):
            evicted = [v for _, index in self.tenants for v in index.evict(len(index))]
            self._drop(evicted, "reset")
            return len(evicted)

    def reset_tenant(self, tenant: Hashable) -> int:
        """Evict every unpinned block of ``tenant``'s namespaces; return how many."""
        with self._lock, self.evictions.pressure("reset", tenant):
            index = self.tenants.index(tenant)
            evicted = index.evict(len(index))
            self._drop(evicted, "reset")
            return len(evicted)

    def stats(self) -> CacheStats:
        with self._lock:
            self.pins.expire()
            return self._stats(
                self.tenants.stats(),
                len(self.tenants),
                self.tenants.pinned_blocks,
                sum(self._dropped.values()),
            )

    def tenant_stats(self, tenant: Hashable) -> CacheStats:
        """``tenant``'s own counters and blocks (``free_blocks``, ``reserved_blocks`` and the
        capacity are the pool's, shared by all tenants)."""
        with self._lock:
            self.pins.expire()
            index = self.tenants.index(tenant)
            return self._stats(
                index.stats(), len(index), index.pinned_blocks, self._dropped.get(tenant, 0)
            )

    def _stats(self, counts: IndexStats, used: int, pinned: int, dropped: int) -> CacheStats:
        return CacheStats(
            *counts,
            dropped_blocks=dropped,
            used_blocks=used,
            free_blocks=self.pool.num_free,
            total_blocks=self.pool.num_blocks,
            pinned_blocks=pinned,
            reserved_blocks=self._reserved,
            block_size=self.block_size,
            used_bytes=used * self.geometry.block_bytes,
            capacity_bytes=self.pool.nbytes,
        )

    def check_invariants(self) -> None:
        """Index invariants, then the conservation law free + used + reserved == total."""
        self.evictions.check_invariants()
        with self._lock:
            in_use: list[int] = []
            for _, index in self.tenants:
                index.check_invariants()
                in_use += index.indexed_values()
            if self._reserved == 0:
                self.pool.check(in_use)
            elif len(in_use) + self.pool.num_free + self._reserved != self.pool.num_blocks:
                raise AssertionError("PrefixKVCache: free + used + reserved != total blocks")
            if self.pins.total_blocks > self.pins.pinnable:
                raise AssertionError("PrefixKVCache: pins hold more than the pinnable blocks")
