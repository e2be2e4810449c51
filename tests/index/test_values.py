"""The value stores (:mod:`prefixkv.index.values`): what each keeps, refuses and returns.
The model tests (``test_tree_model.py``) run the whole index against the reference with
both; these pin down the contract a caller sees."""

from __future__ import annotations

from array import array

import pytest

from prefixkv.index import INT64_VALUES, LIST_VALUES, PrefixIndex, StaleMatchError


def test_the_int64_store_keeps_arrays_and_returns_arrays() -> None:
    index = PrefixIndex(2, values=INT64_VALUES)
    given = array("q", [10, 20, 30])
    assert index.insert([1, 2, 3, 4, 5, 6], given) == array("q")
    assert given == array("q", [10, 20, 30])  # (the caller's array is never changed)
    match = index.match([1, 2, 3, 4, 9, 9])
    assert type(match.values) is array and match.values == array("q", [10, 20])
    match.values[0] = -1  # type: ignore[index]  # (a match's values are its own copy)
    assert index.match([1, 2]).values == array("q", [10])
    rejected = index.insert([1, 2, 7, 7], [99, 98])
    assert rejected == array("q", [99])
    assert sorted(index.indexed_values()) == [10, 20, 30, 98]
    assert index.evict(1) in (array("q", [30]), array("q", [98]))
    assert index.match([5]).values == array("q") and not index.match([5]).values


def test_the_int64_store_refuses_what_is_not_an_int64_naming_values() -> None:
    index = PrefixIndex(2, values=INT64_VALUES)
    for bad in (["a"], [1.5], [2**63]):
        with pytest.raises(TypeError, match="values: the int64 value store"):
            index.insert([1, 2], bad)
    assert len(index) == 0
    index.check_invariants()


def test_the_list_store_keeps_any_value_and_matches_as_tuples() -> None:
    index = PrefixIndex(2)
    assert index.value_store is LIST_VALUES
    marker = object()
    assert index.insert([1, 2, 3, 4], ["a", marker]) == []
    assert index.match([1, 2, 3, 4]).values == ("a", marker)
    assert index.match([9, 9]).values == ()


@pytest.mark.parametrize("store", [LIST_VALUES, INT64_VALUES], ids=lambda s: s.name)
def test_pin_reverifies_a_path_by_the_stores_sameness(store: object) -> None:
    """After an eviction, pin re-verifies the path: the list store by identity, the int64
    store by value (the same slot under the same tokens is the same KV)."""
    index = PrefixIndex(2, values=store)  # type: ignore[arg-type]
    index.insert([1, 2, 3, 4], [1000, 2000])
    match = index.match([1, 2, 3, 4])
    index.evict(2)
    index.insert([1, 2, 3, 4], [1000 + len(""), 2000 + len("")])  # (equal, new int objects)
    if store is INT64_VALUES:
        index.pin(match)
        index.unpin(match)
    else:
        with pytest.raises(StaleMatchError):
            index.pin(match)
    index.insert([5, 6], [7])
    index.evict(1)
    index.evict(2)
    index.insert([1, 2, 3, 4], [1, 2])  # other values: stale with either store
    with pytest.raises(StaleMatchError):
        index.pin(match)
