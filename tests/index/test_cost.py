"""Guarantee: cost. ``match`` and ``insert`` find a child with one dict lookup per node, so
their work does not grow with the fan-out (asserted by counting key comparisons), and one
``evict`` call touches only what it evicts: no heap rebuild or scan over all leaves (asserted
by counting policy priority computations)."""

from __future__ import annotations

import pytest

from prefixkv import PrefixIndex


class CountingKey:
    """A dict key that counts how often the dict compares it."""

    comparisons = 0

    def __init__(self, block: bytes) -> None:
        self.block = block

    def __hash__(self) -> int:
        return hash(self.block)

    def __eq__(self, other: object) -> bool:
        CountingKey.comparisons += 1
        return isinstance(other, CountingKey) and self.block == other.block


def _index_with_siblings(num_siblings: int) -> PrefixIndex:
    index = PrefixIndex(2, child_key=CountingKey)
    for sibling in range(num_siblings):
        index.insert([sibling, 0, 7, 7], [f"s{sibling}", f"t{sibling}"])  # root fan-out
        index.insert([5, 5, sibling, 1], ["u", f"w{sibling}"])  # fan-out one level down
    return index


def _comparisons_for_match(num_siblings: int) -> int:
    index = _index_with_siblings(num_siblings)
    CountingKey.comparisons = 0
    assert index.match([5, 5, 3, 1]).num_tokens == 4
    assert index.match([num_siblings - 1, 0, 7, 7]).num_tokens == 4
    return CountingKey.comparisons


def _comparisons_for_insert(num_siblings: int) -> int:
    index = _index_with_siblings(num_siblings)
    CountingKey.comparisons = 0
    assert index.insert([5, 5, 3, 1, 8, 8], ["u", "w3", "x"]) == ["u", "w3"]  # extends a leaf
    new = num_siblings + 1
    assert index.insert([5, 5, new, 2], ["u", "new"]) == ["u"]  # a new sibling below
    assert index.insert([num_siblings, 0], ["root-sibling"]) == []  # a new sibling at the root
    comparisons = CountingKey.comparisons
    index.check_invariants()
    return comparisons


def test_match_work_does_not_grow_with_siblings() -> None:
    few, many = _comparisons_for_match(4), _comparisons_for_match(20_000)
    assert many <= few + 2, (few, many)


def test_insert_work_does_not_grow_with_siblings() -> None:
    few, many = _comparisons_for_insert(4), _comparisons_for_insert(20_000)
    assert many <= few + 2, (few, many)


class CountingPolicy:
    """LRU that counts priority computations (one per heap push)."""

    name = "counting-lru"
    hit_step = 0

    def __init__(self) -> None:
        self.calls = 0

    def priority(self, access: object) -> tuple[int, ...]:
        self.calls += 1
        return (access.tick,)  # type: ignore[attr-defined]


@pytest.mark.parametrize("leaves", [1_000, 100_000])
def test_one_evict_call_touches_only_what_it_evicts(leaves: int) -> None:
    policy = CountingPolicy()
    index = PrefixIndex(1, policy=policy)
    for leaf in range(leaves):
        index.insert([leaf], [leaf])
    policy.calls = 0
    assert index.evict(3) == [0, 1, 2]
    assert policy.calls == 0  # whole leaves go: no re-push, and no heap rebuild
    index.insert([leaves, 1, 2], ["a", "b", "c"])
    policy.calls = 0
    index.evict(1)  # takes one block of a longer leaf: exactly one re-push
    assert policy.calls <= 1
