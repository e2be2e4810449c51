"""PrefixIndex: contract details (the differential tests cover random sequences)."""

from __future__ import annotations

import itertools

import pytest

from prefixkv import LFUPolicy, LRUPolicy, PrefixIndex, StaleMatchError


def blocks(*ids: int, size: int = 4) -> list[int]:
    """Tokens made of whole blocks, block i filled with ids[i]."""
    return [i for i in ids for _ in range(size)]


def test_only_full_blocks_are_indexed_and_values_may_be_short() -> None:
    index = PrefixIndex(4)
    assert index.insert([*blocks(1, 2, 3), 9, 9], ["a", "b"]) == []
    assert len(index) == 2
    match = index.match([*blocks(1, 2, 3), 9])
    assert (match.num_tokens, match.values) == (8, ("a", "b"))
    assert index.match([1, 1, 1]).num_tokens == 0  # shorter than one block


def test_insert_returns_values_not_adopted() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2), ["a", "b"])
    assert index.insert(blocks(1, 2, 3), ["x", "y", "z"]) == ["x", "y"]
    assert index.match(blocks(1, 2, 3)).values == ("a", "b", "z")


def test_partial_overlap_inside_a_block_does_not_match_that_block() -> None:
    index = PrefixIndex(4)
    index.insert([1, 2, 3, 4, 5, 6, 7, 8], ["a", "b"])
    assert index.match([1, 2, 3, 4, 5, 6, 7, 0]).values == ("a",)
    assert index.match([0, 2, 3, 4]).values == ()


def test_match_never_changes_structure() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2, 3, 4), list("abcd"))
    nodes = index.num_nodes
    index.match(blocks(1, 2))
    index.match(blocks(1, 2, 9))
    assert index.num_nodes == nodes == 1
    index.check_invariants()


def test_evicts_leaves_first_least_recently_used() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2, 3), ["a", "b", "c"])
    index.insert(blocks(1, 5), ["x", "e"])
    index.match(blocks(1, 2, 3))  # the 1-2-3 branch is now the most recent
    assert index.evict(1) == ["e"]
    assert index.evict(3) == ["c", "b", "a"]  # cascades upward, never a middle block first
    assert len(index) == 0 and index.num_nodes == 0


def test_partial_match_refreshes_only_matched_blocks() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2, 3), ["a", "b", "c"])
    index.insert(blocks(7), ["z"])
    index.match(blocks(1, 2))  # blocks a, b are newer than z; c is older
    assert index.evict(2) == ["c", "z"]


def test_lfu_prefers_rarely_used_blocks() -> None:
    index = PrefixIndex(4, policy=LFUPolicy())
    index.insert(blocks(1), ["hot"])
    index.insert(blocks(2), ["cold"])
    for _ in range(3):
        index.match(blocks(1))
    index.insert(blocks(3), ["new"])  # newest, but used once
    assert index.evict(2) == ["cold", "new"]


def test_locks_are_counted_and_pins_block_eviction() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2, 3), ["a", "b", "c"])
    match = index.match(blocks(1, 2))
    index.pin(match)
    index.pin(match)
    assert index.pinned_blocks == 2 and index.evictable_blocks == 1
    assert index.evict(10) == ["c"]
    index.unpin(match)
    assert index.evict(10) == []
    index.unpin(match)
    with pytest.raises(ValueError, match="not pinned"):
        index.unpin(match)
    assert index.evict(10) == ["b", "a"]
    index.check_invariants()


def test_insert_that_splits_a_pinned_node_keeps_its_pins() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2, 3), ["a", "b", "c"])  # one node of three blocks
    match = index.match(blocks(1, 2, 3))
    index.pin(match)
    index.insert(blocks(1, 2, 7), ["a2", "b2", "x"])  # diverges inside the pinned node: split
    index.check_invariants()
    assert index.pinned_blocks == 3 and index.evict(10) == ["x"]
    index.unpin(match)
    index.check_invariants()
    assert index.pinned_blocks == 0 and index.evict(10) == ["c", "b", "a"]


def test_pin_of_stale_match_raises() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2), ["a", "b"])
    match = index.match(blocks(1, 2))
    index.evict(1)
    with pytest.raises(StaleMatchError):
        index.pin(match)
    index.insert(blocks(1, 2), ["a2", "b2"])  # same tokens, new values: still stale
    with pytest.raises(StaleMatchError):
        index.pin(match)
    index.check_invariants()


def test_pin_survives_unrelated_evictions() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2), ["a", "b"])
    index.insert(blocks(9), ["z"])
    match = index.match(blocks(1, 2))
    index.match(blocks(1, 2))
    assert index.evict(1) == ["z"]
    index.pin(match)  # re-verified, still valid
    assert index.pinned_blocks == 2
    index.unpin(match)


def test_match_from_another_index_is_rejected() -> None:
    first, second = PrefixIndex(4), PrefixIndex(4)
    match = first.match(blocks(1))
    with pytest.raises(ValueError, match="another PrefixIndex"):
        second.pin(match)
    with pytest.raises(TypeError):
        first.pin("not a match")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 1.5, "3"])
def test_evict_rejects_bad_counts(bad: object) -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        PrefixIndex(4).evict(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -3, 2.0])
def test_block_size_must_be_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="block_size"):
        PrefixIndex(bad)  # type: ignore[arg-type]


def test_bad_tokens_leave_the_index_unchanged() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2), ["a", "b"])
    before = index.stats()
    for bad in ([1, -2, 3, 4], [1.0, 2, 3, 4], "abcd", [[1, 2, 3, 4]], [2**32, 0, 0, 0]):
        with pytest.raises((TypeError, ValueError)):
            index.insert(bad, ["x"])
        with pytest.raises((TypeError, ValueError)):
            index.match(bad)
    assert index.stats() == before and len(index) == 2
    index.check_invariants()


def test_stats_count_queries_and_hits() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1, 2), ["a", "b"])
    index.match(blocks(1, 2))  # full
    index.match(blocks(1, 3))  # partial
    index.match([*blocks(5), 1, 2])  # miss (6 tokens)
    stats = index.stats()
    assert (stats.queries, stats.full_hits, stats.partial_hits, stats.misses) == (3, 1, 1, 1)
    assert (stats.query_tokens, stats.hit_tokens) == (8 + 8 + 6, 8 + 4)
    assert (stats.inserted_blocks, stats.evicted_blocks) == (2, 0)
    assert stats.hit_rate == pytest.approx(12 / 22)


def test_peek_records_nothing() -> None:
    index = PrefixIndex(4)
    index.insert(blocks(1), ["a"])
    index.insert(blocks(2), ["b"])
    before = index.stats()
    assert index.peek(blocks(1)).values == ("a",)
    assert index.stats() == before
    assert index.evict(1) == ["a"]  # peek did not refresh "a"


def test_long_prompt_round_trip() -> None:
    index = PrefixIndex(16)
    tokens = list(range(32768))
    index.insert(tokens, list(range(2048)))
    assert index.match(tokens).values == tuple(range(2048))
    assert index.match(tokens[:1000] + [7] * 50).num_tokens == 992
    index.check_invariants()


@pytest.mark.parametrize(("policy", "records"), [(LRUPolicy, 1), (LFUPolicy, 32)])
def test_a_conversation_keeps_one_use_record_under_lru(policy: type, records: int) -> None:
    """LRU ignores hit counts, so blocks used together share one record (region); LFU must
    keep one per distinct count: here one per turn."""
    index, ids = PrefixIndex(4, policy=policy()), itertools.count()
    history: list[int] = []
    for turn in range(32):
        history += [turn] * 8
        index.match(history)
        index.insert(history, [next(ids) for _ in range(len(history) // 4)])
        index.check_invariants()
    (node,) = index._roots[None].children.values()
    assert len(node.values) == 64
    assert len(node.regions) == records


def test_discard_removes_a_block_on_and_everything_extending_it() -> None:
    from prefixkv.index import PinnedBlocksError

    index = PrefixIndex(2)
    index.insert([1, 2, 3, 4, 5, 6], ["a", "b", "c"])
    index.insert([1, 2, 3, 4, 7, 8], ["a", "b", "d"])
    index.insert([1, 2, 9, 9], ["a", "e"])
    held = index.match([1, 2, 9, 9])
    index.pin(held)
    with pytest.raises(PinnedBlocksError):
        index.discard([1, 2, 9, 9], 0)  # block 0 is on the pinned path
    assert len(index) == 5
    assert sorted(index.discard([1, 2, 3, 4, 5, 6], 1)) == ["b", "c", "d"]
    index.check_invariants()
    assert index.peek([1, 2, 3, 4, 5, 6]).values == ("a",)
    assert index.peek([1, 2, 9, 9]).values == ("a", "e")
    assert index.discard([1, 2, 3, 4], 1) == []  # not indexed any more
    index.unpin(held)
    assert sorted(index.discard([1, 2], 0)) == ["a", "e"]
    index.check_invariants()
    assert len(index) == 0 and index.num_nodes == 0
