"""Guarantee: bounded memory. A PrefixKVCache never holds more than ``capacity_bytes`` of KV:
its pool is allocated once, whole blocks within the capacity, and never grows or moves; the
cache keeps no KV outside it (every tensor storage reachable from the cache is counted, not
its own counters: see reachable.py); 10,000 store cycles that keep evicting conserve the
pool's blocks (each one free or cached, none leaked), keep the index no larger than the
blocks it names and leave the pool the size it started at."""

from __future__ import annotations

from prefixkv import PrefixKVCache

from ..kvfixtures import LAYOUT, kv_for
from .reachable import storage_bytes_held

BLOCK_BYTES = LAYOUT.block_bytes(4)


def test_cache_churn_keeps_memory_and_nodes_bounded() -> None:
    capacity_blocks = 64
    cache = PrefixKVCache(LAYOUT, 4, BLOCK_BYTES * capacity_blocks)
    pool_at_start = cache.pool.data.untyped_storage().data_ptr()
    for cycle in range(10_000):
        tokens = [cycle % 997, cycle // 997, *range(cycle % 7, cycle % 7 + 20)]
        cache.store(tokens, kv_for(tokens))
        stats = cache.stats()
        # Conservation: a block is free or cached, never lost (nor counted twice).
        assert stats.used_blocks + stats.free_blocks == capacity_blocks
        assert cache.index.num_nodes <= stats.used_blocks
        if cycle % 1000 == 999:  # what the cache really holds, not what it reports
            assert storage_bytes_held(cache) == capacity_blocks * BLOCK_BYTES
    assert cache.pool.data.untyped_storage().data_ptr() == pool_at_start  # never reallocated
    assert cache.stats().evicted_blocks > 9_000
    assert cache.reset() > 0
    assert (len(cache.index), cache.index.num_nodes, cache.stats().free_blocks) == (
        0,
        0,
        capacity_blocks,
    )
    cache.check_invariants()


def test_memory_never_exceeds_capacity() -> None:
    capacity = BLOCK_BYTES * 5 + 123  # not a whole number of blocks: rounded down
    cache = PrefixKVCache(LAYOUT, 4, capacity)
    assert storage_bytes_held(cache) == 5 * BLOCK_BYTES == cache.stats().capacity_bytes
    for start in range(0, 400, 7):
        tokens = list(range(start, start + 13))  # 3 whole blocks each: the pool keeps evicting
        cache.store(tokens, kv_for(tokens))
        stats = cache.stats()
        assert storage_bytes_held(cache) == 5 * BLOCK_BYTES
        assert stats.used_bytes == stats.used_blocks * BLOCK_BYTES
        assert stats.used_blocks + stats.free_blocks == 5
    assert cache.stats().evicted_blocks > 0
    cache.check_invariants()
