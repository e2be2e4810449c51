"""Offline explain: each reason from a replayed log, and agreement with the replay itself."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.whatif.explain import Eviction, OfflineFinding, explain_offline
from prefixkv.whatif.records import LoggedRequest
from prefixkv.whatif.replay import CacheConfig, Replay

from .workloads import BLOCK, chain, requests

BYTES = 1000  # KV bytes per block in these logs
ROOT = b"a"


def logged(symbols: list[int], tail: int = 0, time: float | None = None) -> LoggedRequest:
    """A request whose prompt is the blocks ``symbols`` (+ ``tail`` tokens), one token out."""
    names = chain(symbols, ROOT)
    return LoggedRequest(
        names, (), len(symbols) * BLOCK + tail, 0, 1, 0.01, BLOCK, BYTES, time=time
    )


def explain(
    log: list[LoggedRequest], symbols: list[int], tail: int = 0, blocks: int = 100,
    disk: int | None = None,
) -> OfflineFinding:  # fmt: skip
    config = CacheConfig(blocks * BYTES, "lru", None if disk is None else disk * BYTES)
    return explain_offline(log, chain(symbols, ROOT), len(symbols) * BLOCK + tail, config)


def test_a_logged_prompt_hits_and_its_tail_is_a_partial_block() -> None:
    log = [logged([1, 2, 3], tail=2)]
    assert explain(log, [1, 2, 3]).reason == "hit"
    found = explain(log, [1, 2, 3], tail=3)
    assert (found.reason, found.hit_blocks, found.hit_tokens) == ("partial_block", 3, 12)
    assert found.requests == 1


def test_a_block_pushed_out_is_evicted_with_the_request_that_pushed_it() -> None:
    log = [logged([1, 2], 1, time=10.0), logged([2, 2], 1, time=11.0), logged([0, 0], 1, 12.0)]
    found = explain(log, [1, 2], blocks=4)
    assert found.reason == "evicted" and found.hit_blocks == 0
    assert found.eviction == Eviction(request=3, time=12.0)


def test_a_disk_tier_holds_what_ram_evicted() -> None:
    log = [logged([1, 2], 1), logged([2, 2], 1), logged([0, 0], 1)]
    found = explain(log, [1, 2], blocks=4, disk=16)
    assert (found.reason, found.lower_tier_blocks) == ("lower_tier", 2)


def test_a_different_continuation_diverges_and_nothing_like_it_is_cold() -> None:
    log = [logged([1, 2, 0], 1)]
    found = explain(log, [1, 2, 1, 1])
    assert (found.reason, found.hit_blocks) == ("diverged", 2)
    # A first block nobody cached is cold, even though the cache holds other prompts.
    assert explain(log, [2, 2]).reason == "cold"


def test_a_block_size_other_than_the_logs_is_refused() -> None:
    with pytest.raises(ValueError, match="blocks hold 4 tokens"):
        explain_offline([logged([1])], chain([1, 1], ROOT), 4, CacheConfig(BYTES * 8))
    with pytest.raises(ValueError, match="no request"):
        explain_offline([], chain([1], ROOT), 4, CacheConfig(BYTES * 8))


@settings(max_examples=150, deadline=None)
@given(
    log=st.lists(requests(), min_size=1, max_size=12),
    prompt=requests(),
    blocks=st.integers(1, 12),
)
def test_the_hit_is_what_the_replay_would_serve_and_each_reason_holds(
    log: list[LoggedRequest], prompt: LoggedRequest, blocks: int
) -> None:
    """The blocks explain says hit are the blocks a replay of the same log then serves the
    prompt from RAM (up to its lookup blocks); an eviction names a request that logged
    the name before it; a hit or partial block covers every full block."""
    config = CacheConfig(blocks * prompt.block_bytes)
    names = prompt.blocks
    count = len(names) * BLOCK + prompt.prompt_tokens % BLOCK
    found = explain_offline(log, names, count, config)
    replay = Replay(config, prompt.block_bytes)
    for request in log:
        replay.feed(request)
        replay.check_invariants()
    asked = LoggedRequest(names, (), count, 0, 1, 0.01, BLOCK, prompt.block_bytes)
    ram, _ = replay.feed(asked)
    assert ram == min(found.hit_blocks, asked.lookup_blocks)
    assert (found.reason in ("hit", "partial_block")) == (found.hit_blocks == len(names))
    if found.reason == "evicted":
        assert found.eviction is not None
        seen = log[: found.eviction.request - 1]
        assert any(names[found.hit_blocks] in r.blocks + r.output_blocks for r in seen)
    if found.reason == "diverged":
        assert found.hit_blocks > 0
