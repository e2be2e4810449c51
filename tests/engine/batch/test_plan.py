"""The step plan: decode first, the token budget, chunked prefill, slots and runs."""

from __future__ import annotations

from typing import Any

import torch

from prefixkv.cache.table import BlockTable
from prefixkv.engine.batch.attention import SeqSpan
from prefixkv.engine.batch.cascade import CascadeKernel
from prefixkv.engine.batch.plan import (
    MAX_HELD,
    Feed,
    input_of,
    layout_of,
    note_held,
    plan_step,
    runs_of,
)
from prefixkv.engine.batch.sequence import Outcome, Sequence
from prefixkv.engine.request import Completion, Request, SamplingParams
from prefixkv.tokens import as_token_bytes

CPU = torch.device("cpu")


class NoSink:
    cancelled = False

    def deliver(self, item: str | Completion) -> None:
        pass

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        pass


def seq(tokens: list[int], computed: int = 0, blocks: list[int] | None = None) -> Sequence:
    request = Request(as_token_bytes(tokens), SamplingParams(max_tokens=4))
    made = Sequence.create(request, NoSink(), tokenizer=None, eos=frozenset())
    made.computed = computed
    if blocks is not None:
        made.table = BlockTable(None, blocks, 0, 0, None)
    return made


def fed(feeds: list[Feed]) -> list[tuple[Any, int]]:
    return [(f.seq, f.tokens) for f in feeds]


def test_decode_tokens_come_first_then_prefill_chunks_in_order() -> None:
    prefill = seq(list(range(10)))
    first, second = seq([1, 2, 3], computed=2), seq([4, 5], computed=1)
    feeds = plan_step([prefill, first, second], max_batch_tokens=5)
    assert fed(feeds) == [(first, 1), (second, 1), (prefill, 3)]


def test_prefills_share_the_budget_shortest_remaining_first() -> None:
    a, b, c = seq(list(range(4))), seq(list(range(6))), seq(list(range(3)))
    assert fed(plan_step([a, b, c], max_batch_tokens=7)) == [(c, 3), (a, 4)]
    assert fed(plan_step([a, b, c], max_batch_tokens=100)) == [(c, 3), (a, 4), (b, 6)]
    assert fed(plan_step([a, b], max_batch_tokens=3)) == [(a, 3)]  # nothing completes: fill


def test_a_step_that_gives_a_first_token_takes_no_partial_chunk() -> None:
    a, b, c = seq(list(range(4))), seq(list(range(6))), seq(list(range(3)))
    assert fed(plan_step([a, b, c], max_batch_tokens=9)) == [(c, 3), (a, 4)]  # b: 2 of 6
    b.held = MAX_HELD  # left out long enough: it joins
    assert fed(plan_step([a, b, c], max_batch_tokens=9)) == [(c, 3), (a, 4), (b, 2)]


def test_a_held_back_prompt_fills_the_rows_the_step_is_padded_to() -> None:
    """A step completing a prompt still takes another's partial chunk where the linear
    layers pad the step anyway: never past the padding or the budget."""
    a, b, c = seq(list(range(4))), seq(list(range(6))), seq(list(range(3)))

    def eights(n: int) -> int:
        return -(-n // 8) * 8

    assert fed(plan_step([a, b, c], max_batch_tokens=10)) == [(c, 3), (a, 4)]
    # 7 tokens run as 8 rows: one token of b rides along
    assert fed(plan_step([a, b, c], 10, padded=eights)) == [(c, 3), (a, 4), (b, 1)]
    # padded to 16 rows, but the budget leaves 3
    assert fed(plan_step([a, b, c], 10, padded=lambda n: 16)) == [(c, 3), (a, 4), (b, 3)]
    d, e = seq(list(range(8))), seq(list(range(20)))
    assert fed(plan_step([d, e], 12, padded=eights)) == [(d, 8)]  # 8 rows: no room


def test_a_cached_request_never_waits_behind_a_long_prefill() -> None:
    long = seq(list(range(8000)))  # admitted first, thousands of tokens to prefill
    cached = seq(list(range(40)), computed=32)  # its prefix was cached: 8 tokens left
    assert fed(plan_step([long, cached], max_batch_tokens=512)) == [(cached, 8)]


def test_a_stream_of_short_prompts_cannot_starve_a_long_one() -> None:
    """Every step a new cached request completes its prompt; the long prompt still gets a
    chunk at least once every MAX_HELD + 1 steps."""
    long = seq(list(range(3000)))
    fed_steps = []
    for step in range(12):
        short = seq(list(range(40)), computed=36)
        running = [long, short]
        feeds = plan_step(running, max_batch_tokens=512)
        note_held(running, feeds)
        assert (short, 4) in fed(feeds)
        if any(f.seq is long for f in feeds):
            long.computed += next(f.tokens for f in feeds if f.seq is long)
            fed_steps.append(step)
    assert fed_steps == [2, 5, 8, 11]
    assert long.held == 0


def test_every_decode_is_fed_even_past_the_budget_and_prefill_waits() -> None:
    decodes = [seq([1, 2], computed=1) for _ in range(3)]
    prefill = seq(list(range(5)))
    feeds = plan_step([*decodes, prefill], max_batch_tokens=2)
    assert fed(feeds) == [(d, 1) for d in decodes]


def test_a_long_prompt_is_fed_in_chunks_until_it_decodes() -> None:
    prompt = seq(list(range(10)))
    chunks = []
    while True:
        (feed,) = plan_step([prompt], max_batch_tokens=4)
        chunks.append(feed.tokens)
        prompt.computed += feed.tokens
        if prompt.pending == 0:
            break
    assert chunks == [4, 4, 2]
    prompt.tokens.append(7)  # a sampled token: now one decode token per step
    assert fed(plan_step([prompt], max_batch_tokens=4)) == [(prompt, 1)]


def test_a_one_token_prompt_is_a_decode_feed() -> None:
    single = seq([3])
    assert fed(plan_step([single], max_batch_tokens=1)) == [(single, 1)]


def test_runs_merge_consecutive_blocks_and_cut_the_last_run() -> None:
    assert runs_of([3, 4, 5, 9, 10], 17, 4) == ((12, 12), (36, 5))
    assert runs_of([3, 4, 5, 9, 10], 12, 4) == ((12, 12),)
    assert runs_of([3, 4, 5, 9, 10], 13, 4) == ((12, 12), (36, 1))
    assert runs_of([5, 4], 8, 4) == ((20, 4), (16, 4))  # not consecutive in token order
    assert runs_of([2, 3, 4], 1, 4) == ((8, 1),)
    assert runs_of([0, 1], 8, 4) == ((0, 8),)
    assert runs_of([7], 0, 4) == ()


def test_layout_slots_and_spans_of_two_sequences() -> None:
    a = seq(list(range(6)), computed=3, blocks=[2, 7])  # feeds positions 3, 4, 5
    b = seq([1, 2, 3, 4, 5], computed=4, blocks=[1, 0])  # decodes position 4
    layout = layout_of([Feed(a, 3), Feed(b, 1)], 4, CPU, CascadeKernel())
    assert layout.slots.tolist() == [2 * 4 + 3, 7 * 4 + 0, 7 * 4 + 1, 0 * 4 + 0]
    assert layout.slots.dtype == torch.int64
    assert layout.spans == (
        SeqSpan(start=0, count=3, context=6, runs=((8, 4), (28, 2))),
        SeqSpan(start=3, count=1, context=5, runs=((4, 4), (0, 1))),
    )


def test_input_ids_and_positions_pack_the_feeds() -> None:
    a = seq([10, 11, 12, 13, 14], computed=1)
    b = seq([20, 21, 22], computed=2)
    ids, positions = input_of([Feed(a, 3), Feed(b, 1)], CPU)
    assert ids.tolist() == [[11, 12, 13, 22]]
    assert positions.tolist() == [[1, 2, 3, 2]]
    assert ids.dtype == positions.dtype == torch.int64
