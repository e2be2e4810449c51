"""PrefixIndex input forms: every form behaves as the list form, and a miss reads one block."""

from __future__ import annotations

import array
import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv import PrefixIndex
from prefixkv.tokens import TokenBytes, as_token_bytes

from ..token_forms import WIDE_AND_NARROW

BLOCK = 4

FORMS: dict[str, Callable[[list[int]], Any]] = {
    "tuple": tuple,
    "TokenBytes": as_token_bytes,
    **{f"array('{tc}')": partial(array.array, tc) for tc in "bBhHiIlLqQ"},
    "numpy int64": lambda ids: np.array(ids, dtype=np.int64),
    "numpy uint16": lambda ids: np.array(ids, dtype=np.uint16),
    "torch int64": lambda ids: torch.tensor(ids, dtype=torch.int64),
}

# A tiny alphabet makes shared prefixes, partial blocks and splits common.
prompts_st = st.lists(st.integers(0, 3), max_size=30)


def outcome(match: Any) -> tuple[int, tuple[Any, ...]]:
    return match.num_tokens, match.values


@given(
    inserted=st.lists(prompts_st, max_size=8),
    queries=st.lists(prompts_st, min_size=1, max_size=8),
    extra=st.integers(-2, 1),
)
@settings(max_examples=150, deadline=None)
def test_every_form_matches_and_inserts_like_the_list_form(
    inserted: list[list[int]], queries: list[list[int]], extra: int
) -> None:
    """One index per form, driven with the same operations (each in its form), must give
    the same answers as the index driven with lists, and stay consistent."""
    indexes = {name: PrefixIndex(BLOCK) for name in ["list", *FORMS]}
    values = itertools.count()
    for prompt in inserted:
        vals = [next(values) for _ in range(max(0, len(prompt) // BLOCK + extra))]
        expected = indexes["list"].insert(prompt, vals)
        for name, make in FORMS.items():
            assert indexes[name].insert(make(prompt), vals) == expected, name
    for query in queries:
        expected_peek = outcome(indexes["list"].peek(query))
        expected = outcome(indexes["list"].match(query))
        assert expected_peek == expected
        for name, make in FORMS.items():
            assert outcome(indexes[name].peek(make(query))) == expected, name
            assert outcome(indexes[name].match(make(query))) == expected, name
    for name, index in indexes.items():
        index.check_invariants()
        assert index.stats() == indexes["list"].stats(), name


@pytest.mark.parametrize("form", ["list", *FORMS])
def test_a_long_round_trip_in_every_form(form: str) -> None:
    make = FORMS.get(form, list)
    index = PrefixIndex(16)
    prompt = [(i * 7) % 120 for i in range(4096)]
    assert index.insert(make(prompt), range(256)) == []
    assert index.match(make(prompt)).values == tuple(range(256))
    assert index.match(make(prompt[:1000] + [121] * 50)).num_tokens == 992
    assert index.match(make([121] * 4096)).num_tokens == 0
    index.check_invariants()


# --- what a call reads ------------------------------------------------------------------------


class RecordingList(list[Any]):
    """A list that records which slices of it are taken (what the index reads)."""

    def __init__(self, items: list[Any]) -> None:
        super().__init__(items)
        self.slices: list[tuple[int, int]] = []

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            self.slices.append((key.start or 0, key.stop))
        return super().__getitem__(key)


def test_a_miss_on_a_long_prompt_reads_only_the_first_block() -> None:
    index = PrefixIndex(16)
    index.insert(list(range(64)), range(4))
    prompt = RecordingList([7] * 100_000)
    assert index.match(prompt).num_tokens == 0
    assert prompt.slices == [(0, 16)]


@pytest.mark.parametrize(
    "make",
    WIDE_AND_NARROW,
)
def test_a_miss_never_sees_malformed_ids_after_the_first_block(
    make: Callable[[list[int]], Any],
) -> None:
    """Proof by poison: every id after the first block is invalid, and nothing raises."""
    index = PrefixIndex(16)
    index.insert(list(range(64)), range(4))
    prompt = [5] * 16 + [-1] * 50_000
    assert index.match(make(prompt)).num_tokens == 0
    assert index.peek(make(prompt)).num_tokens == 0
    assert index.match(make(prompt[:10])).num_tokens == 0  # shorter than a block: all read
    with pytest.raises(ValueError, match="element 16 is -1"):
        index.match(make(list(range(16)) + [-1] * 100))  # the first block hits: reads on
    index.check_invariants()


def test_a_miss_still_validates_the_first_block() -> None:
    index = PrefixIndex(16)
    for bad, error in (([1] * 15 + [-1] + [0] * 100, ValueError), ([0.5] * 40, TypeError)):
        with pytest.raises(error, match="element"):
            index.match(bad)
    with pytest.raises(TypeError, match="element 0"):
        index.match([[1, 2, 3]])  # shorter than a block: every id is read


def test_ids_after_the_last_full_block_are_never_read() -> None:
    index = PrefixIndex(4)
    index.insert([1, 2, 3, 4, 5, 6, 7, 8], ["a", "b"])
    query = RecordingList([1, 2, 3, 4, 5, 6, 7, 8, "not an id", -1])
    assert index.match(query).values == ("a", "b")
    assert all(stop <= 8 for _, stop in query.slices)


def test_a_hit_reads_what_it_covers_and_validates_it() -> None:
    index = PrefixIndex(4)
    index.insert(list(range(40)), list(range(10)))
    with pytest.raises(ValueError, match="element 21 is -5"):
        index.match([*range(21), -5, *range(22, 40)])
    with pytest.raises(TypeError, match=r"element 30 is 1\.5"):
        index.match([*range(30), 1.5, *range(31, 40)])


def test_insert_validates_every_id_it_stores_and_ignores_the_rest() -> None:
    index = PrefixIndex(4)
    with pytest.raises(ValueError, match="element 6 is -1"):
        index.insert([1, 2, 3, 4, 5, 6, -1, 8], ["a", "b"])
    assert len(index) == 0 and index.stats().inserted_blocks == 0
    assert index.insert([1, 2, 3, 4, 5, 6, 7, 8, -1], ["a", "b"]) == []  # partial tail
    assert index.insert([9, 9, 9, 9, -1, 0, 0, 0], ["c"]) == []  # only one value: one block
    assert index.match([1, 2, 3, 4, 5, 6, 7, 8]).values == ("a", "b")
    index.check_invariants()


@pytest.mark.parametrize(
    "bad",
    [
        "abcd" * 8,
        b"\x00" * 64,
        np.zeros((2, 16), np.int64),
        np.ones(32, dtype=bool),
        np.ones(32) * 0.5,
        array.array("d", [1.0] * 32),
        torch.ones(32),
        torch.zeros(1, 32, dtype=torch.long),
        [[1] * 4] * 8,
    ],
)
def test_malformed_inputs_raise_in_every_call_and_change_nothing(bad: Any) -> None:
    index = PrefixIndex(4)
    index.insert(list(range(32)), list(range(8)))
    before = index.stats()
    for call in (index.match, index.peek, lambda t: index.insert(t, list(range(8)))):
        with pytest.raises((TypeError, ValueError)):
            call(bad)
    assert index.stats() == before and len(index) == 8
    index.check_invariants()


def test_matches_stay_hashable_and_pinnable_in_every_form() -> None:
    index = PrefixIndex(4)
    prompt = [(i * 7) % 101 for i in range(400)]  # fits every typecode
    index.insert(prompt, list(range(100)))
    for make in [list, *FORMS.values()]:
        match = index.match(make(prompt))
        assert match.num_tokens == 400 and hash(match) == hash(match)
        index.pin(match)
        assert index.pinned_blocks == 100
        index.unpin(match)
    index.check_invariants()


def test_a_stale_match_from_any_form_is_reverified_against_its_own_bytes() -> None:
    index = PrefixIndex(4)
    index.insert(list(range(16)), list("abcd"))
    index.insert([99] * 4, ["z"])
    source = array.array("q", range(16))
    match = index.match(source)
    source[0] = 12345  # the caller's buffer changes: the match kept its own converted bytes
    index.evict(1)  # evicts "z": pin must re-verify the path
    index.pin(match)
    assert index.pinned_blocks == 4
    index.unpin(match)
    index.check_invariants()


def test_token_bytes_need_no_reading() -> None:
    index = PrefixIndex(4)
    index.insert(TokenBytes(array.array("I", range(8)).tobytes()), ["a", "b"])
    assert index.match(as_token_bytes(range(8))).values == ("a", "b")


@pytest.mark.parametrize("make", WIDE_AND_NARROW)
def test_a_bad_id_in_a_long_insert_changes_nothing_past_the_branch(
    make: Callable[[list[int]], Any],
) -> None:
    # The new blocks branch off inside an indexed node and the bad id lies beyond the branch:
    # insert must read it before it splits the node or records any use.
    index = PrefixIndex(4)
    base = list(range(4000))
    index.insert(base, list(range(1000)))
    before = (index.stats(), len(index), index.next_eviction())
    bad = [*base[:2000], 7, 7, 7, 7, *base[2004:3000], -1, *base[3001:]]
    with pytest.raises(ValueError, match="element 3000 is -1"):
        index.insert(make(bad), list(range(1000)))
    assert (index.stats(), len(index), index.next_eviction()) == before
    index.check_invariants()


def test_an_insert_keeps_its_own_copy_of_a_long_array() -> None:
    ids = [(i * 7919) % 50_000 for i in range(5000)]
    source = array.array("q", ids)
    index = PrefixIndex(16)
    index.insert(source, list(range(312)))
    source[100] = 1  # the caller may change and resize its array afterwards
    source.append(5)
    assert index.match(ids).num_tokens == 4992
    assert index.match(source).num_tokens == 96
    index.check_invariants()


@pytest.mark.parametrize("namespace", [None, "new"])
def test_a_bad_id_deep_in_a_long_array_changes_nothing(namespace: str | None) -> None:
    # A fresh prompt from a long array('q'), in an indexed namespace or a new one: the bad id
    # must surface before the namespace's root, or any tick, exists.
    index = PrefixIndex(4)
    index.insert(list(range(400)), list(range(100)))
    before = (index.stats(), len(index), index.next_eviction())
    ids = [*range(10_000, 13_000), -1, *range(13_001, 14_000)]
    with pytest.raises(ValueError, match="element 3000 is -1"):
        index.insert(array.array("q", ids), list(range(100, 1100)), namespace)
    assert (index.stats(), len(index), index.next_eviction()) == before
    index.check_invariants()
    ids[3000] = 5
    assert index.insert(array.array("q", ids), list(range(100, 1100)), namespace) == []
    assert index.match(ids, namespace).num_tokens == 4000
    index.check_invariants()
