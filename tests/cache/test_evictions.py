"""The eviction ring: bounded, newest kept (a hypothesis model), and the cache's records of
who needed the room."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.cache import KVLayout, Namespace, PrefixKVCache
from prefixkv.cache.evictions import EvictionRing, LocalNamer
from prefixkv.index.evicted import EvictedRun
from prefixkv.tokens import as_token_bytes

LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=2)


class OneTokenNames:
    """Block size 1, a block's name is its token: the ring's order is easy to model."""

    def names(self, tokens: bytes, namespace: Hashable, num_blocks: int) -> list[bytes]:
        return [bytes(tokens[4 * i : 4 * i + 4]) for i in range(num_blocks)]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=4)))
def test_the_ring_keeps_the_newest_names_within_its_capacity(
    capacity: int, runs: list[list[int]]
) -> None:
    ring = EvictionRing(OneTokenNames(), capacity)
    model: OrderedDict[bytes, None] = OrderedDict()
    for tokens in runs:
        buf = as_token_bytes(tokens)
        with ring.pressure("store", None):
            ring.evicted(EvictedRun(None, buf, 0, len(tokens)))
        for i in range(len(tokens)):
            name = bytes(buf[4 * i : 4 * i + 4])
            model.pop(name, None)
            model[name] = None
            if len(model) > capacity:
                model.popitem(last=False)
        ring.check_invariants()
        assert ring.names() == list(model)
        assert len(ring) <= capacity
    for name in model:
        assert ring.find(name, None, 0) is not None


def test_local_names_are_chained_per_namespace() -> None:
    namer = LocalNamer(2)
    a = namer.names(as_token_bytes([1, 2, 3, 4]), "x", 2)
    assert namer.names(as_token_bytes([1, 2, 9, 9]), "x", 2)[0] == a[0]
    assert namer.names(as_token_bytes([9, 9, 3, 4]), "x", 2)[1] != a[1]  # the prefix counts
    assert namer.names(as_token_bytes([1, 2, 3, 4]), "y", 2) != a


def test_the_cache_records_who_needed_the_room() -> None:
    cache = PrefixKVCache(LAYOUT, 2, LAYOUT.block_bytes(2) * 4)
    mine, theirs = Namespace("t1"), Namespace("t2")
    cache.store(list(range(8)), _kv(8), mine)
    table = cache.open(list(range(100, 104)), theirs)
    assert cache.grow(table, 4)  # running KV of another tenant: two of mine go
    cache.close(table)
    ring = cache.evictions
    record = ring.find(as_token_bytes(list(range(8))), mine, 3)
    assert record is not None and record.pressure == "running" and not record.own_tenant
    assert cache.explain(list(range(8)), mine).finding.reason == "evicted"
    cache.reset_tenant("t1")
    record = ring.find(as_token_bytes(list(range(8))), mine, 0)
    assert record is not None and record.pressure == "reset" and record.own_tenant
    cache.check_invariants()


def _kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.zeros(1, n, 2), torch.zeros(1, n, 2))]
