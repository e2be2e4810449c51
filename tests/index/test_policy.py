"""Eviction policies: LRU and LFU priorities and what one use counts (``hit_step``),
``policy_by_name``, and the eviction order each one gives through a PrefixIndex."""

from __future__ import annotations

import re

import pytest

from prefixkv import BlockAccess, LFUPolicy, LRUPolicy, PrefixIndex
from prefixkv.index.policy import EvictionPolicy, policy_by_name


def test_lru_orders_by_last_use_only() -> None:
    policy = LRUPolicy()
    assert (policy.name, policy.hit_step) == ("lru", 0)  # counts no hits
    assert policy.priority(BlockAccess(hits=1, tick=7)) == (7,)
    accesses = [BlockAccess(9, 5), BlockAccess(1, 8), BlockAccess(4, 2)]
    assert sorted(accesses, key=policy.priority) == [accesses[2], accesses[0], accesses[1]]


def test_lfu_orders_by_use_count_then_last_use() -> None:
    policy = LFUPolicy()
    assert (policy.name, policy.hit_step) == ("lfu", 1)  # one use adds one hit
    assert policy.priority(BlockAccess(hits=3, tick=7)) == (3, 7)
    accesses = [BlockAccess(2, 5), BlockAccess(1, 8), BlockAccess(2, 3), BlockAccess(1, 1)]
    expected = [accesses[3], accesses[1], accesses[2], accesses[0]]
    assert sorted(accesses, key=policy.priority) == expected


@pytest.mark.parametrize("policy", [LRUPolicy(), LFUPolicy()], ids=["lru", "lfu"])
def test_priorities_end_with_the_tick(policy: EvictionPolicy) -> None:
    """The protocol's tie-break: distinct ticks always give distinct priorities."""
    for hits in (1, 5):
        for tick in (0, 3, 10**12):
            assert policy.priority(BlockAccess(hits, tick))[-1] == tick


@pytest.mark.parametrize(
    ("name", "policy_type"),
    [("lru", LRUPolicy), ("lfu", LFUPolicy), ("LRU", LRUPolicy), ("Lfu", LFUPolicy)],
)
def test_policy_by_name(name: str, policy_type: type) -> None:
    policy = policy_by_name(name)
    assert type(policy) is policy_type
    assert policy.name == name.lower()


@pytest.mark.parametrize("name", ["fifo", "", " lru", "lru-k"])
def test_policy_by_name_rejects_unknown_names_and_lists_the_choices(name: str) -> None:
    message = f"unknown eviction policy {name!r}; choose one of ['lfu', 'lru']"
    with pytest.raises(ValueError, match=re.escape(message)):
        policy_by_name(name)


def _tokens(*ids: int) -> list[int]:
    """Whole blocks of size 2, block i filled with ids[i]."""
    return [i for i in ids for _ in range(2)]


# A history of uses, then evictions one block at a time. Use counts (LFU) and last uses:
#   B 1 use (op 2), x2 1 use (op 4), D 1 use (op 11), C 2 uses (op 10), x1 3 uses (op 9),
#   A 4 uses (op 7). x1 is x2's parent, so it is evictable only once x2 is gone.
EVICTION_ORDER = {
    "lru": ["B", "x2", "A", "x1", "C", "D"],
    "lfu": ["B", "x2", "D", "C", "x1", "A"],
}


@pytest.mark.parametrize("name", sorted(EVICTION_ORDER))
def test_eviction_order_through_the_index(name: str) -> None:
    index = PrefixIndex(2, policy=policy_by_name(name))
    index.insert(_tokens(1), ["A"])  # op 1
    index.insert(_tokens(2), ["B"])  # op 2
    index.insert(_tokens(3), ["C"])  # op 3
    index.insert(_tokens(4, 5), ["x1", "x2"])  # op 4
    for _ in range(3):
        index.match(_tokens(1))  # ops 5-7: A
    index.match(_tokens(4))  # op 8: x1 only
    index.match(_tokens(4, 6))  # op 9: x1 only (the second block differs)
    index.match(_tokens(3))  # op 10
    index.insert(_tokens(6), ["D"])  # op 11
    index.check_invariants()
    order = []
    while len(index):
        (evicted,) = index.evict(1)
        order.append(evicted)
        index.check_invariants()
    assert order == EVICTION_ORDER[name]
    assert index.num_nodes == 0
