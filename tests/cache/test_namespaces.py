"""Guarantee: namespaces isolate tenants in the cache. KV stored under one namespace is never
served to a lookup in another: that lookup is a miss, counted as one."""

from __future__ import annotations

from prefixkv import PrefixKVCache

from ..kvfixtures import LAYOUT, kv_for


def test_namespaces_isolate_the_cache() -> None:
    tokens = list(range(16))
    cache = PrefixKVCache(LAYOUT, 4, LAYOUT.block_bytes(4) * 16)
    cache.store(tokens, kv_for(tokens), namespace=("salt", "x"))
    with cache.lookup(tokens, namespace=("salt", "y")) as lease:
        assert lease.num_tokens == 0
    with cache.lookup(tokens, namespace=("salt", "x")) as lease:
        assert lease.num_tokens == 16
    stats = cache.stats()
    assert (stats.misses, stats.full_hits) == (1, 1)
    cache.check_invariants()
