"""Shared-prefix decoding: grouped attention equals attention over each whole context, and
only spans that can share are grouped."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.engine.batch import cascade
from prefixkv.engine.batch.attention import SeqSpan, StepLayout, paged_attention
from prefixkv.engine.batch.cascade import CascadePlan, attend_shared, group_spans
from prefixkv.engine.batch.plan import runs_of

from .test_attention import DIM, HEADS, pool, reference
from .test_runner import (
    assert_clean,
    batch_engine,
    drive,
    ids,
    runner_of,
    serial_engine,
    submit,
)

CPU = torch.device("cpu")


def test_members_sharing_a_first_run_are_grouped_the_rest_stay_alone() -> None:
    spans = [
        SeqSpan(0, 1, 13, ((0, 12), (20, 1))),  # shares slots 0.. with the next two
        SeqSpan(1, 1, 14, ((0, 8), (24, 6))),
        SeqSpan(2, 1, 10, ((0, 10),)),  # its whole context is in the run: keeps its last token
        SeqSpan(3, 1, 5, ((30, 5),)),  # shares with nobody
        SeqSpan(4, 3, 14, ((0, 12), (40, 2))),  # a prefill chunk: never grouped
    ]
    shared, alone = group_spans(spans, CPU)
    assert len(shared) == 1
    group = shared[0]
    assert group.runs == ((0, 8),)  # the shortest run, all keep >= 1 token
    assert group.rows.tolist() == [0, 1, 2]
    assert group.valid.sum(1).tolist() == [5, 6, 2]
    assert group.rest[0, :5].tolist() == [8, 9, 10, 11, 20]
    assert {s.start for s in alone} == {3, 4}


def test_a_member_with_a_long_rest_is_attended_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cascade, "REST_MAX", 4)
    spans = [
        SeqSpan(0, 1, 6, ((0, 4), (10, 2))),
        SeqSpan(1, 1, 7, ((0, 4), (20, 3))),
        SeqSpan(2, 1, 12, ((0, 4), (30, 8))),  # 8 tokens past the shared run
    ]
    shared, alone = group_spans(spans, CPU)
    assert [g.rows.tolist() for g in shared] == [[0, 1]]
    assert [s.start for s in alone] == [2]


# A document prefilled in chunks while others took blocks between them: two shared runs.
SPLIT = [
    SeqSpan(0, 1, 15, ((0, 8), (16, 4), (40, 3))),
    SeqSpan(1, 1, 13, ((0, 8), (16, 5))),  # its own blocks follow the shared ones at once
    SeqSpan(2, 1, 14, ((0, 8), (16, 4), (44, 2))),
]


def test_members_sharing_several_runs_are_grouped_over_all_of_them() -> None:
    (group,), alone = group_spans(SPLIT, CPU)
    assert group.runs == ((0, 8), (16, 4)) and not alone
    assert group.valid.sum(1).tolist() == [3, 1, 2]
    assert group.rest[0, :3].tolist() == [40, 41, 42]
    assert group.rest[1, :1].tolist() == [20]


def test_documents_under_one_system_prompt_are_grouped_per_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every request shares the system prompt's block; each document's readers share more.
    Grouped on the system block alone, the rests would be too long: the groups are the
    documents'."""
    monkeypatch.setattr(cascade, "REST_MAX", 4)
    spans = [
        SeqSpan(0, 1, 14, ((0, 4), (10, 8), (40, 2))),
        SeqSpan(1, 1, 15, ((0, 4), (10, 8), (42, 3))),
        SeqSpan(2, 1, 14, ((0, 4), (24, 8), (46, 2))),
        SeqSpan(3, 1, 13, ((0, 4), (24, 8), (48, 1))),
        SeqSpan(4, 1, 14, ((0, 4), (24, 4), (50, 6))),  # reads half of document two
        SeqSpan(5, 1, 7, ((0, 4), (56, 3))),  # the system prompt, then its own question
        SeqSpan(6, 1, 7, ((0, 4), (60, 3))),
    ]
    shared, alone = group_spans(spans, CPU)
    got = {g.runs: g.rows.tolist() for g in shared}
    assert got == {((0, 4), (10, 8)): [0, 1], ((0, 4), (24, 8)): [2, 3], ((0, 4),): [5, 6]}
    assert [s.start for s in alone] == [4]


@pytest.mark.parametrize(
    ("spans", "want"),
    [
        ([SeqSpan(0, 1, 9, ((0, 8), (16, 1))), SeqSpan(1, 1, 9, ((0, 8), (24, 1)))], ((0, 8),)),
        ([SeqSpan(0, 1, 12, ((0, 12),)), SeqSpan(1, 1, 12, ((0, 12),))], ((0, 11),)),
        ([SeqSpan(0, 1, 9, ((0, 4), (8, 5))), SeqSpan(1, 1, 9, ((0, 9),))], ((0, 4),)),
    ],
)
def test_common_runs_stop_where_contexts_part(
    spans: list[SeqSpan], want: tuple[tuple[int, int], ...]
) -> None:
    assert cascade.common_runs(spans) == want


@pytest.mark.parametrize("spans", [SPLIT[:2], SPLIT])
@pytest.mark.parametrize("scale", [DIM**-0.5, 0.3])
def test_attend_shared_over_several_runs_matches_attention(
    spans: list[SeqSpan], scale: float
) -> None:
    keys, values = pool(4)
    (group,), _ = group_spans(spans, CPU)
    query = torch.randn(HEADS, len(spans), DIM, generator=torch.Generator().manual_seed(5))
    got = attend_shared(query, keys, values, group, scale)
    for i, span in enumerate(spans):
        want = reference(query[:, i : i + 1], keys, values, span, scale)[:, 0]
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [DIM**-0.5, 0.3])
def test_attend_shared_matches_attention_over_each_context(scale: float) -> None:
    keys, values = pool()
    spans = [
        SeqSpan(0, 1, 13, ((0, 12), (20, 1))),
        SeqSpan(1, 1, 14, ((0, 8), (24, 6))),
        SeqSpan(2, 1, 10, ((0, 10),)),
    ]
    (group,), _ = group_spans(spans, CPU)
    query = torch.randn(HEADS, 3, DIM, generator=torch.Generator().manual_seed(2))
    got = attend_shared(query, keys, values, group, scale)  # [B, heads, dim]
    for i, span in enumerate(spans):
        want = reference(query[:, i : i + 1], keys, values, span, scale)[:, 0]
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


def test_paged_attention_mixes_groups_and_single_spans() -> None:
    keys, values = pool(3)
    spans = (
        SeqSpan(0, 1, 9, ((0, 8), (30, 1))),
        SeqSpan(1, 2, 7, ((16, 7),)),  # a prefill chunk of 2
        SeqSpan(3, 1, 10, ((0, 8), (36, 2))),
    )
    shared, alone = group_spans(spans, CPU)
    assert len(shared) == 1 and len(alone) == 1
    query = torch.randn(1, HEADS, 4, DIM, generator=torch.Generator().manual_seed(4))
    layout = StepLayout(torch.arange(4), alone, CascadePlan(shared))
    module = torch.nn.Module()
    out, _ = paged_attention(module, query, keys, values, None, scaling=None, step=layout)
    for span in spans:
        rows = slice(span.start, span.start + span.count)
        want = reference(query[0, :, rows], keys, values, span, None)  # [heads, n, dim]
        torch.testing.assert_close(out[0, rows], want.transpose(0, 1), rtol=1e-5, atol=1e-5)


def test_requests_on_one_document_decode_as_a_group_and_match_alone(
    parts: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    groups: list[int] = []

    def counted(query: Any, keys: Any, values: Any, group: Any, scale: float) -> Any:
        groups.append(group.rows.numel())
        return attend_shared(query, keys, values, group, scale)

    monkeypatch.setattr("prefixkv.engine.batch.cascade.attend_shared", counted)
    asked = five_questions_on_one_document(parts, "torch")
    assert groups and max(groups) == asked  # all five read the document once a step


def five_questions_on_one_document(parts: tuple[Any, Any], kernel: str) -> int:
    """Five requests about one cached document, served together by a runner on ``kernel``:
    each gets the tokens it gets alone on the serial engine, and nothing stays pinned.
    Returns the number of requests."""
    document = ids(11, 40)
    prompts = [document + ids(20 + i, 3 + i) for i in range(5)]
    engine = batch_engine(parts)
    engine.generate(document + ids(99, 2), max_tokens=1)  # the document is cached
    runner = runner_of(engine, kernel, max_running=8, max_batch_tokens=64)
    sinks = [submit(engine, runner, p, max_tokens=10) for p in prompts]
    drive(runner)
    alone = serial_engine(parts)
    for prompt, sink in zip(prompts, sinks, strict=True):
        assert sink.completion.token_ids == alone.generate(prompt, max_tokens=10).token_ids
    assert_clean(engine)
    return len(prompts)


@st.composite
def block_tables(draw: st.DrawFn) -> list[SeqSpan]:
    """Decoding spans over a random tree of blocks (shared prefixes of any depth, fresh
    blocks anywhere in the pool), as the index hands them out."""
    size = 4
    children: dict[tuple[int, ...], list[int]] = {}
    free = iter(draw(st.permutations(list(range(128)))))  # enough for 12 x 10 blocks
    spans = []
    for row in range(draw(st.integers(1, 12))):
        path: tuple[int, ...] = ()
        for _ in range(draw(st.integers(1, 10))):
            known = children.setdefault(path, [])
            if known and draw(st.booleans()):
                block = draw(st.sampled_from(known))
            else:
                block = next(free)
                known.append(block)
            path += (block,)
        context = draw(st.integers(2, len(path) * size))
        spans.append(SeqSpan(row, 1, context, runs_of(list(path), context, size)))
    return spans


def _slots(span: SeqSpan) -> list[int]:
    return [a + i for a, c in span.runs for i in range(c)]


@settings(max_examples=200, deadline=None)
@given(block_tables(), st.integers(1, 12))
def test_groups_share_their_runs_and_every_span_lands_once(
    spans: list[SeqSpan], rest_max: int
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cascade, "REST_MAX", rest_max)
        shared, alone = group_spans(spans, CPU)
    rows = [r for g in shared for r in g.rows.tolist()] + [s.start for s in alone]
    assert sorted(rows) == [s.start for s in spans]  # each span exactly once
    for group in shared:
        assert group.rows.numel() >= 2
        prefix = [a + i for a, c in group.runs for i in range(c)]
        for row in group.rows.tolist():
            slots = _slots(spans[row])
            assert slots[: len(prefix)] == prefix  # the shared runs start its context
            assert 1 <= len(slots) - len(prefix) <= rest_max  # a short rest of its own
