"""Tenants of one cache (``Namespace(tenant, salt)``): per-tenant counters, occupancy and
resets; one LRU/LFU order across all tenants; and capacity shares that keep a tenant's
blocks safe from the others while it stays within its share."""

from __future__ import annotations

import random
from collections.abc import Hashable

import pytest

from prefixkv import PrefixKVCache
from prefixkv.cache import Namespace
from prefixkv.index import LFUPolicy, LRUPolicy

from ..kvfixtures import LAYOUT, kv_for

BLOCK = 4


def cache(blocks: int, share: float | None = None, **kwargs: object) -> PrefixKVCache:
    return PrefixKVCache(
        LAYOUT, BLOCK, LAYOUT.block_bytes(BLOCK) * blocks, tenant_share=share, **kwargs
    )  # type: ignore[arg-type]


def prompt(tag: int, blocks: int) -> list[int]:
    return [tag % 997, tag // 997, *range(tag % 5, tag % 5 + BLOCK * blocks - 2)]


def cached(c: PrefixKVCache, tokens: list[int], namespace: Hashable) -> int:
    with c.lookup(tokens, namespace) as lease:
        return lease.num_tokens


@pytest.mark.parametrize("policy", [LRUPolicy(), LFUPolicy()], ids=["lru", "lfu"])
def test_without_shares_tenants_share_one_eviction_order(policy: object) -> None:
    """Splitting namespaces among tenants changes nothing about what gets evicted."""
    split, whole = cache(40, policy=policy), cache(40, policy=policy)
    rng = random.Random(5)
    prompts = [prompt(i, rng.randrange(1, 6)) for i in range(30)]
    for step in range(400):
        i = rng.randrange(len(prompts))
        tokens, tenant = prompts[i], i % 3
        if rng.random() < 0.5:
            split.store(tokens, kv_for(tokens), Namespace(tenant))
            whole.store(tokens, kv_for(tokens), ("ns", tenant))
        else:
            assert cached(split, tokens, Namespace(tenant)) == cached(whole, tokens, ("ns", tenant))
        if step % 50 == 0:
            split.check_invariants()
    assert split.stats().evicted_blocks == whole.stats().evicted_blocks > 0
    assert split.stats().used_blocks == whole.stats().used_blocks


def test_tenant_stats_and_resets_are_per_tenant() -> None:
    c = cache(64)
    a, b = prompt(1, 4), prompt(2, 3)
    c.store(a, kv_for(a), Namespace("ana", "s1"))
    c.store(a, kv_for(a), Namespace("ana", "s2"))
    c.store(b, kv_for(b), Namespace("bo"))
    cached(c, a, Namespace("ana", "s1"))
    cached(c, b, Namespace("bo"))
    cached(c, b, Namespace("bo"))
    ana, bo, whole = c.tenant_stats("ana"), c.tenant_stats("bo"), c.stats()
    assert (ana.used_blocks, ana.queries, ana.hit_tokens) == (8, 1, 16)
    assert (bo.used_blocks, bo.queries, bo.hit_tokens) == (3, 2, 24)
    assert whole.used_blocks == 11 and whole.queries == 3 and whole.inserted_blocks == 11
    with c.lookup(b, Namespace("bo")) as lease:  # a pinned block survives any reset
        assert c.reset_tenant("ana") == 8
        assert c.reset_tenant("bo") == 0
        assert lease.num_tokens == 12
    assert c.tenant_stats("ana").used_blocks == 0 and c.tenant_stats("bo").used_blocks == 3
    assert c.reset() == 3
    c.check_invariants()


def test_a_tenant_within_its_share_is_never_evicted_by_another() -> None:
    c = cache(20, share=0.5)  # 10 blocks each are safe
    kept = [prompt(i, 3) for i in range(3)]  # 9 blocks: within the share
    for tokens in kept:
        c.store(tokens, kv_for(tokens), Namespace("bo"))
    for i in range(100, 160):  # a flood far larger than the cache
        tokens = prompt(i, 4)
        c.store(tokens, kv_for(tokens), Namespace("ana"))
        assert c.tenant_stats("bo").used_blocks == 9
    assert all(cached(c, t, Namespace("bo")) == 12 for t in kept)
    # Ana's flood fills all Bo leaves (11 blocks), evicting its own, never more than it needs
    # (at most 11 fit beside Bo's 9 anyway: ``<= 11`` could not fail).
    assert c.tenant_stats("ana").used_blocks == 11 and c.tenant_stats("ana").evicted_blocks > 0
    assert c.stats().free_blocks == 0
    c.check_invariants()


def test_a_tenant_over_its_share_loses_only_the_excess() -> None:
    c = cache(20, share=0.25)  # 5 blocks each are safe
    for i in range(4):  # Bo takes 16 blocks while the cache is free
        tokens = prompt(i, 4)
        c.store(tokens, kv_for(tokens), Namespace("bo"))
    for i in range(100, 140):
        tokens = prompt(i, 2)
        c.store(tokens, kv_for(tokens), Namespace("ana"))
    assert c.tenant_stats("bo").used_blocks == 5  # down to its share, not below
    assert c.tenant_stats("ana").dropped_blocks == 0
    c.check_invariants()


def test_stores_that_find_nothing_evictable_drop_and_count_it() -> None:
    c = cache(8, share=0.5)
    mine = prompt(1, 4)
    c.store(mine, kv_for(mine), Namespace("bo"))
    big = prompt(2, 8)
    assert c.store(big, kv_for(big), Namespace("ana")) == 4  # only the free half
    assert c.tenant_stats("ana").dropped_blocks == 4 and c.stats().dropped_blocks == 4
    assert c.tenant_stats("bo").dropped_blocks == 0
    c.check_invariants()


def test_random_tenant_traffic_keeps_every_invariant() -> None:
    rng = random.Random(9)
    c = cache(30, share=0.4)
    leases = []
    for _ in range(600):
        tokens, ns = (
            prompt(rng.randrange(40), rng.randrange(1, 7)),
            Namespace(rng.randrange(3), rng.randrange(2)),
        )
        roll = rng.random()
        if roll < 0.45:
            c.store(tokens, kv_for(tokens), ns)
        elif roll < 0.8:
            leases.append(c.lookup(tokens, ns))
        elif roll < 0.9 and leases:
            leases.pop(rng.randrange(len(leases))).release()
        elif roll < 0.95:
            c.reset_tenant(rng.randrange(3))
        else:
            c.reset()
        c.check_invariants()
    for lease in leases:
        lease.release()
    assert c.stats().pinned_blocks == 0
    assert sum(c.tenant_stats(t).used_blocks for t in range(3)) == c.stats().used_blocks
