"""Differential tests: PrefixIndex against the deliberately simple ReferenceIndex."""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from prefixkv import LFUPolicy, LRUPolicy, PrefixIndex, StaleMatchError
from prefixkv.index import INT64_VALUES, LIST_VALUES, PinnedBlocksError, ValueStore
from prefixkv.index.reference import ReferenceIndex

BLOCK = 2
# A tiny alphabet makes shared prefixes, splits and partial-block overlaps common.
tokens_st = st.lists(st.integers(0, 2), max_size=14)
namespaces_st = st.sampled_from([None, "tenant-a"])
STORES = {"list": LIST_VALUES, "int64": INT64_VALUES}


def plain(store: ValueStore, values: Sequence[Any], kind: str = "run") -> list[Any]:
    """``values`` as a list, after checking they have ``store``'s type: a run (what insert,
    evict and discard return) or a match's values."""
    expected = {("list", "run"): list, ("list", "match"): tuple}.get((store.name, kind), array)
    assert type(values) is expected, (store.name, kind, type(values))
    if expected is array:
        assert values.typecode == "q"  # type: ignore[attr-defined]
    return list(values)


class IndexVsReference(RuleBasedStateMachine):
    policy_cls: type = LRUPolicy
    store: ValueStore = LIST_VALUES

    def __init__(self) -> None:
        super().__init__()
        self.index = PrefixIndex(BLOCK, policy=self.policy_cls(), values=self.store)
        self.ref = ReferenceIndex(BLOCK, policy=self.policy_cls())
        self.values = itertools.count()
        self.matches: list[tuple[object, object, list[int]]] = []  # mine, theirs, tokens
        self.inserted: list[tuple[list[int], str | None]] = []  # tokens, namespace

    @rule(tokens=tokens_st, extra=st.integers(-3, 1), ns=namespaces_st)
    def insert(self, tokens: list[int], extra: int, ns: str | None) -> None:
        count = max(0, len(tokens) // BLOCK + extra)
        values = [next(self.values) for _ in range(count)]
        found = self.index.insert(tokens, values, ns)
        assert plain(self.store, found) == self.ref.insert(tokens, values, ns)
        self.inserted.append((tokens, ns))
        del self.inserted[:-6]

    @rule(tokens=tokens_st, extra=st.integers(-3, 1), ns=namespaces_st)
    def insert_with_match(self, tokens: list[int], extra: int, ns: str | None) -> None:
        """The insert's match is the reference's peek of the inserted blocks right after it,
        and pins like any match (kept for the pin rules)."""
        count = max(0, len(tokens) // BLOCK + extra)
        values = [next(self.values) for _ in range(count)]
        rejected, mine = self.index.insert_with_match(tokens, values, ns)
        assert plain(self.store, rejected) == self.ref.insert(tokens, values, ns)
        theirs = self.ref.peek(tokens[: count * BLOCK], ns)
        mine_values = plain(self.store, mine.values, "match")
        assert (mine.num_tokens, mine_values) == (theirs.num_tokens, list(theirs.values))
        assert mine.namespace == ns
        self.matches.append((mine, theirs, tokens))
        del self.matches[:-6]
        self.inserted.append((tokens, ns))
        del self.inserted[:-6]

    @rule(tokens=tokens_st, ns=namespaces_st)
    def match(self, tokens: list[int], ns: str | None) -> None:
        mine, theirs = self.index.match(tokens, ns), self.ref.match(tokens, ns)
        mine_values = plain(self.store, mine.values, "match")
        assert (mine.num_tokens, mine_values) == (theirs.num_tokens, list(theirs.values))
        assert mine.num_tokens % BLOCK == 0 and mine.num_blocks == len(mine.values)
        self.matches.append((mine, theirs, tokens))
        del self.matches[:-6]

    # Independent random token lists rarely share a prefix, so matches would be mostly empty
    # and pins rare. These two rules derive a query from an earlier insert and an insert from
    # an earlier (maybe pinned) match: splits under pins, partial matches, shared prefixes.

    @precondition(lambda self: self.inserted)
    @rule(data=st.data(), tail=tokens_st)
    def match_near_an_insert(self, data: st.DataObject, tail: list[int]) -> None:
        tokens, ns = data.draw(st.sampled_from(self.inserted))
        self.match(tokens[: data.draw(st.integers(0, len(tokens)))] + tail, ns)

    @precondition(lambda self: self.matches)
    @rule(data=st.data(), tail=tokens_st, extra=st.integers(-3, 1))
    def insert_diverging_from_a_match(
        self, data: st.DataObject, tail: list[int], extra: int
    ) -> None:
        mine, _, tokens = data.draw(st.sampled_from(self.matches))
        cut = data.draw(st.integers(0, len(tokens)))
        self.insert(tokens[:cut] + tail, extra, mine.namespace)  # type: ignore[attr-defined]

    @precondition(lambda self: self.matches)
    @rule(data=st.data())
    def pin(self, data: st.DataObject) -> None:
        mine, theirs, _ = data.draw(st.sampled_from(self.matches))
        outcomes = []
        for index, match in ((self.index, mine), (self.ref, theirs)):
            try:
                index.pin(match)
                outcomes.append("pinned")
            except StaleMatchError:
                outcomes.append("stale")
        assert outcomes[0] == outcomes[1]

    @precondition(lambda self: self.matches)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        mine, theirs, _ = data.draw(st.sampled_from(self.matches))
        outcomes = []
        for index, match in ((self.index, mine), (self.ref, theirs)):
            try:
                index.unpin(match)
                outcomes.append("unpinned")
            except ValueError:
                outcomes.append("not pinned")
        assert outcomes[0] == outcomes[1]

    @precondition(lambda self: self.inserted)
    @rule(data=st.data(), first=st.integers(0, 7))
    def discard(self, data: st.DataObject, first: int) -> None:
        tokens, ns = data.draw(st.sampled_from(self.inserted))
        outcomes = []
        for index in (self.index, self.ref):
            try:
                found = index.discard(tokens, first, ns)
                if index is self.index:
                    plain(self.store, found)
                outcomes.append(sorted(found))
            except PinnedBlocksError:
                outcomes.append(["pinned"])
        assert outcomes[0] == outcomes[1]

    @rule(count=st.integers(0, 6))
    def evict(self, count: int) -> None:
        assert plain(self.store, self.index.evict(count)) == self.ref.evict(count)

    @invariant()
    def consistent(self) -> None:
        self.index.check_invariants()
        assert len(self.index) == len(self.ref)
        assert self.index.evictable_blocks == self.ref.evictable_blocks
        assert self.index.pinned_blocks == self.ref.pinned_blocks
        assert self.index.num_nodes <= len(self.index)


class LFUIndexVsReference(IndexVsReference):
    policy_cls = LFUPolicy


class Int64IndexVsReference(IndexVsReference):
    store = INT64_VALUES


class Int64LFUIndexVsReference(IndexVsReference):
    policy_cls = LFUPolicy
    store = INT64_VALUES


settings_ = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestLRUAgainstReference = IndexVsReference.TestCase
TestLRUAgainstReference.settings = settings_
TestLFUAgainstReference = LFUIndexVsReference.TestCase
TestLFUAgainstReference.settings = settings_
TestInt64LRUAgainstReference = Int64IndexVsReference.TestCase
TestInt64LRUAgainstReference.settings = settings_
TestInt64LFUAgainstReference = Int64LFUIndexVsReference.TestCase
TestInt64LFUAgainstReference.settings = settings_


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("policy", [LRUPolicy, LFUPolicy])
def test_long_random_run_matches_reference(policy: type, store: str) -> None:
    """A longer seeded run with bigger blocks than hypothesis explores."""
    import random

    rng = random.Random(7)
    values_of = STORES[store]
    index = PrefixIndex(4, policy=policy(), values=values_of)
    ref = ReferenceIndex(4, policy=policy())
    counter = itertools.count()
    bases = [[rng.randrange(3) for _ in range(rng.randrange(40))] for _ in range(8)]
    for step in range(3000):
        tokens = rng.choice(bases)[: rng.randrange(41)] + [
            rng.randrange(3) for _ in range(rng.randrange(9))
        ]
        op = rng.random()
        if op < 0.45:
            values = [next(counter) for _ in range(len(tokens) // 4)]
            assert plain(values_of, index.insert(tokens, values)) == ref.insert(tokens, values)
        elif op < 0.9:
            a, b = index.match(tokens), ref.match(tokens)
            assert (a.num_tokens, plain(values_of, a.values, "match")) == (
                b.num_tokens,
                list(b.values),
            )
        else:
            count = rng.randrange(12)
            assert plain(values_of, index.evict(count)) == ref.evict(count), step
        if step % 50 == 0:
            index.check_invariants()
    index.check_invariants()
    assert len(index) == len(ref)
