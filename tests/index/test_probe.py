"""``PrefixIndex.probe`` and ``deepest_elsewhere`` against brute force over what was inserted,
and the eviction hook's runs (the tokens of exactly the blocks removed)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv import PrefixIndex
from prefixkv.index.evicted import EvictedRun
from prefixkv.tokens import as_token_bytes, tokens_from_bytes

BLOCK = 3
seqs = st.lists(st.integers(0, 2), max_size=12)


def shared(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@settings(max_examples=300, deadline=None)
@given(st.lists(seqs, max_size=6), seqs)
def test_probe_finds_the_longest_shared_tokens(inserted: list[list[int]], query: list[int]) -> None:
    index = PrefixIndex(BLOCK)
    for seq in inserted:
        index.insert(seq, list(range(len(seq) // BLOCK)))
    cached = [seq[: len(seq) // BLOCK * BLOCK] for seq in inserted]
    probe = index.probe(query)
    blocks = index.peek(query).num_blocks
    assert probe.matched_blocks == blocks
    assert probe.common_tokens == max([0, *(shared(c, query) for c in cached)])
    after = [c for c in cached if len(c) > blocks * BLOCK and shared(c, query) >= blocks * BLOCK]
    assert probe.continues == bool(after)
    if probe.common_tokens > blocks * BLOCK:  # the continuation shown is the nearest one
        shown = tokens_from_bytes(probe.cached_next)
        assert shared(shown, query[blocks * BLOCK :]) == probe.common_tokens - blocks * BLOCK
    assert index.stats().queries == 0  # read-only


def test_deepest_elsewhere_skips_the_own_namespace() -> None:
    index = PrefixIndex(BLOCK)
    index.insert(list(range(9)), [0, 1, 2], "a")
    index.insert(list(range(6)), [0, 1], "b")
    index.insert(list(range(9)), [0, 1, 2], "c")
    found = index.deepest_elsewhere(list(range(9)), "c")
    assert found is not None and found.num_blocks == 3 and found.namespace == "a"
    assert index.deepest_elsewhere([7, 7, 7], "c") is None
    assert sorted(index.namespaces()) == ["a", "b", "c"]


class Runs:
    def __init__(self) -> None:
        self.runs: list[EvictedRun] = []

    def evicted(self, run: EvictedRun) -> None:
        self.runs.append(run)


@settings(max_examples=200, deadline=None)
@given(st.lists(seqs, min_size=1, max_size=6), st.integers(1, 8))
def test_every_evicted_block_is_reported_once_with_its_prefix(
    inserted: list[list[int]], count: int
) -> None:
    observer = Runs()
    index = PrefixIndex(BLOCK, on_evict=observer)
    for seq in inserted:
        index.insert(seq, [tuple(seq[: (i + 1) * BLOCK]) for i in range(len(seq) // BLOCK)])
    values = index.evict(count)
    reported = []
    for run in observer.runs:
        tokens = tokens_from_bytes(run.tokens)
        assert len(tokens) == (run.first_block + run.num_blocks) * BLOCK
        reported += [
            tuple(tokens[: (i + 1) * BLOCK]) for i in range(run.first_block, len(tokens) // BLOCK)
        ]
        assert run.tokens == as_token_bytes(tokens)
    assert sorted(reported) == sorted(values)  # the value of a block is its whole prefix
