"""Guarantee: bounded memory. A PrefixKVCache never holds more than ``capacity_bytes`` of KV:
its pool is allocated once and never grows, and 10,000 store cycles that keep evicting leave
the used blocks within capacity, the index no larger than the blocks it names, and the pool
the size it started at."""

from __future__ import annotations

from prefixkv import PrefixKVCache

from ..kvfixtures import LAYOUT, kv_for


def test_cache_churn_keeps_memory_and_nodes_bounded() -> None:
    capacity_blocks = 64
    cache = PrefixKVCache(LAYOUT, 4, LAYOUT.block_bytes(4) * capacity_blocks)
    pool_bytes = cache.stats().capacity_bytes
    for cycle in range(10_000):
        tokens = [cycle % 997, cycle // 997, *range(cycle % 7, cycle % 7 + 20)]
        cache.store(tokens, kv_for(tokens))
        stats = cache.stats()
        assert stats.used_blocks <= capacity_blocks
        assert cache.index.num_nodes <= stats.used_blocks
    assert cache.stats().capacity_bytes == pool_bytes == cache.pool.data.numel() * 4
    assert cache.stats().evicted_blocks > 9_000
    assert cache.reset() > 0
    assert (len(cache.index), cache.index.num_nodes, cache.stats().free_blocks) == (
        0,
        0,
        capacity_blocks,
    )
    cache.check_invariants()


def test_memory_never_exceeds_capacity() -> None:
    capacity = LAYOUT.block_bytes(4) * 5 + 123
    cache = PrefixKVCache(LAYOUT, 4, capacity)
    assert cache.pool.nbytes <= capacity
    for start in range(0, 400, 7):
        tokens = list(range(start, start + 13))
        cache.store(tokens, kv_for(tokens))
        assert cache.stats().used_bytes <= cache.stats().capacity_bytes <= capacity
