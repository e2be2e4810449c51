"""NullCache: the prefix cache that caches nothing (the uncached baseline)."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from prefixkv.cache.explain import MISS_REASONS, Explanation, disabled
from prefixkv.cache.layout import GeometryOwner, KVGeometry, KVLayout
from prefixkv.cache.pins import PinRefused, PrefixPin
from prefixkv.cache.pool import BlockPool
from prefixkv.cache.protocol import CacheStats, RamOnly
from prefixkv.cache.table import BlockTable
from prefixkv.tokens import TokenBytes, as_token_bytes, token_count


class NullCache(RamOnly, GeometryOwner):
    """Implements BlockStore and caches nothing (a null object): every ``open`` misses,
    ``reserve`` takes no block, ``commit`` indexes none.

    It still validates its input exactly like PrefixKVCache, so a caller cannot tell the two
    apart by their errors, only by their hits.
    """

    def __init__(
        self,
        layout: KVLayout,
        block_size: int = 16,
        device: str | torch.device = "cpu",
        capacity_bytes: int = 0,
    ) -> None:
        """``capacity_bytes``: a pool for running sequences' KV (a batching engine writes it
        there; nothing is ever indexed). 0: no pool, for the serial runner."""
        self.geometry = KVGeometry(layout, block_size)
        self.device = torch.device(device)
        blocks = capacity_bytes // self.geometry.block_bytes
        self.pool = BlockPool(self.geometry, blocks, self.device) if blocks else None
        self._queries = self._tokens = 0
        self._counting = threading.Lock()

    # --- running sequences: private blocks only, nothing indexed -------------------------

    def open(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        """An empty table; counts and validates ``tokens`` like a lookup that misses."""
        count = token_count(as_token_bytes(tokens))
        with self._counting:
            self._queries += 1
            self._tokens += count
        return BlockTable(namespace, [], 0, 0, None)

    def hold(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        """An empty table, counting nothing."""
        as_token_bytes(tokens)
        return BlockTable(namespace, [], 0, 0, None)

    def discard(
        self, tokens: Sequence[int] | Any, first_block: int, namespace: Hashable = None
    ) -> int:
        return 0

    def grow(self, table: BlockTable, num_tokens: int) -> bool:
        need = self.geometry.blocks_for(num_tokens) - len(table.blocks)
        if need <= 0:
            return True
        with self._counting:
            if self.pool is None or self.pool.num_free < need:
                return False
            blocks = self.pool.allocate(need)
        table.blocks += blocks
        table.private.update(blocks)
        return True

    def reserve(self, table: BlockTable, num_tokens: int) -> int:
        """Nothing is cached: takes no block."""
        return len(table.blocks)

    def commit(self, table: BlockTable, tokens: TokenBytes) -> int:
        return 0

    def close(self, table: BlockTable) -> None:
        with self._counting:
            if self.pool is not None:
                self.pool.free(table.private)
            table.blocks, table.private = [], set()

    def cached(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> int:
        return 0

    def available_blocks(self) -> int:
        with self._counting:
            return 0 if self.pool is None else self.pool.num_free

    def pin_prefix(
        self, tokens: Sequence[int] | Any, namespace: Hashable, ttl_seconds: float
    ) -> PrefixPin:
        """Refused: nothing is ever cached here."""
        raise PinRefused("the prefix cache is off (--no-prefix-cache): nothing to pin", "cache_off")

    def unpin_prefix(self, pin_id: str, tenant: Hashable) -> PrefixPin | None:
        return None

    def reset(self) -> int:
        return 0

    def reset_tenant(self, tenant: Hashable) -> int:
        return 0

    def explain(
        self, tokens: Sequence[int] | Any, namespace: Hashable = None, window: int = 64
    ) -> Explanation:
        """Every prompt misses here, for one reason: ``disabled``."""
        return disabled(as_token_bytes(tokens), self.block_size)

    def miss_tokens(self) -> dict[str, int]:
        """Every token looked up missed: ``disabled``."""
        with self._counting:
            return {reason: self._tokens if reason == "disabled" else 0 for reason in MISS_REASONS}

    def tenant_miss_tokens(self, tenant: Hashable) -> dict[str, int]:
        """Every tenant's (as ``tenant_stats``)."""
        return self.miss_tokens()

    def tenant_stats(self, tenant: Hashable) -> CacheStats:
        """The counts of every tenant: a cache that keeps nothing tells nobody anything."""
        return self.stats()

    def stats(self) -> CacheStats:
        return CacheStats(
            queries=self._queries,
            query_tokens=self._tokens,
            hit_tokens=0,
            full_hits=0,
            partial_hits=0,
            misses=self._queries,
            inserted_blocks=0,
            dropped_blocks=0,
            evicted_blocks=0,
            used_blocks=0,
            free_blocks=0 if self.pool is None else self.pool.num_free,
            total_blocks=0 if self.pool is None else self.pool.num_blocks,
            pinned_blocks=0,
            # Every block taken from the pool is a running sequence's own: none is indexed.
            reserved_blocks=0 if self.pool is None else self.pool.num_blocks - self.pool.num_free,
            block_size=self.block_size,
            used_bytes=0,
            capacity_bytes=0 if self.pool is None else self.pool.nbytes,
        )

    def check_invariants(self) -> None:
        return None
