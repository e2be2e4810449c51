"""Attention through a sliding window or capped logits (src/prefixkv/engine/batch/band.py)
against eager attention over a contiguous context under an explicitly built mask, and
paged attention's routing of such layers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.engine.batch.attention import SeqSpan, StepLayout, paged_attention
from prefixkv.engine.batch.band import Band, attend_band, skip_runs
from prefixkv.engine.batch.cascade import CascadeKernel
from prefixkv.engine.batch.kernels import AttentionKernel, attention_kernel
from prefixkv.kernels.build import NativeUnavailable
from tests.engine.kernel_matrix import unavailable

KV_HEADS, GROUPS, DIM, SLOTS = 2, 3, 8, 64
HEADS = KV_HEADS * GROUPS


def pool(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(KV_HEADS, SLOTS, DIM, generator=gen),
        torch.randn(KV_HEADS, SLOTS, DIM, generator=gen),
    )


def reference(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    span: SeqSpan,
    scale: float,
    band: Band,
) -> torch.Tensor:
    """Eager attention of ``q`` ``[heads, n, dim]`` over the span's whole context, kv heads
    repeated, the window's visibility decided pair by pair (transformers' rule: key ``k`` is
    seen by query ``p`` where ``k <= p`` and ``k > p - window``)."""
    k = torch.cat([keys[:, a : a + c] for a, c in span.runs], dim=1).repeat_interleave(GROUPS, 0)
    v = torch.cat([values[:, a : a + c] for a, c in span.runs], dim=1).repeat_interleave(GROUPS, 0)
    n = q.shape[1]
    seen = torch.zeros(n, span.context, dtype=torch.bool)
    for i in range(n):
        p = span.context - n + i
        for j in range(span.context):
            seen[i, j] = j <= p and (band.window is None or j > p - band.window)
    scores = (q @ k.transpose(1, 2)) * scale
    if band.softcap is not None:
        scores = band.softcap * torch.tanh(scores / band.softcap)
    scores = scores.masked_fill(~seen, float("-inf"))
    return torch.softmax(scores, -1) @ v


@st.composite
def spans(draw: st.DrawFn) -> SeqSpan:
    """A span over a context split into runs at random places of the pool."""
    context = draw(st.integers(1, 40))
    count = draw(st.integers(1, min(context, 12)))
    cuts = sorted(draw(st.sets(st.integers(1, context - 1), max_size=4))) if context > 1 else []
    lengths = [b - a for a, b in zip([0, *cuts], [*cuts, context], strict=True)]
    order = draw(st.permutations(range(len(lengths))))
    starts, at = {}, 0  # lay the runs out in the pool in a shuffled order
    for i in order:
        starts[i], at = at + 1, at + 1 + lengths[i]
    return SeqSpan(0, count, context, tuple((starts[i], lengths[i]) for i in range(len(lengths))))


@settings(max_examples=150, deadline=None)
@given(
    span=spans(),
    window=st.one_of(st.none(), st.integers(1, 12)),
    softcap=st.one_of(st.none(), st.sampled_from([0.5, 5.0])),
    seed=st.integers(0, 2**16),
)
def test_attend_band_is_eager_attention_under_the_window(
    span: SeqSpan, window: int | None, softcap: float | None, seed: int
) -> None:
    keys, values = pool(seed)
    q = torch.randn(HEADS, span.count, DIM, generator=torch.Generator().manual_seed(seed + 1))
    band = Band(window, softcap)
    got = attend_band(q, keys, values, span, GROUPS, 0.4, band)
    want = reference(q, keys, values, span, 0.4, band)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_skip_runs_drops_tokens_across_runs() -> None:
    runs = ((12, 4), (0, 4), (28, 3))
    assert skip_runs(runs, 0) == runs
    assert skip_runs(runs, 5) == ((1, 3), (28, 3))
    assert skip_runs(runs, 8) == ((28, 3),)


def test_a_sliding_layer_attends_the_sequences_the_kernel_planned_too() -> None:
    keys, values = pool(7)
    shared = ((0, 16),)
    steps = (
        SeqSpan(0, 1, 19, (*shared, (20, 3))),  # decoding, sharing 16 tokens: planned
        SeqSpan(1, 1, 18, (*shared, (24, 2))),
        SeqSpan(2, 4, 9, ((32, 9),)),  # a prefill chunk: left to attend one by one
    )
    plan, others = CascadeKernel().plan(steps, torch.device("cpu"))
    assert len(others) == 1 and plan.groups
    step = StepLayout(torch.arange(6), others, plan, steps[:2])
    query = torch.randn(1, HEADS, 6, DIM, generator=torch.Generator().manual_seed(8))
    band = Band(5, 3.0)
    out, _ = paged_attention(
        torch.nn.Module(),
        query,
        keys,
        values,
        None,
        scaling=0.3,
        step=step,
        sliding_window=5,
        softcap=3.0,
    )
    for span in steps:
        q = query[0, :, span.start : span.start + span.count]
        want = reference(q, keys, values, span, 0.3, band).transpose(0, 1)
        torch.testing.assert_close(out[0, span.start : span.start + span.count], want)


@pytest.mark.parametrize(
    ("kwargs", "named"), [({"dropout": 0.1}, "dropout"), ({"s_aux": torch.zeros(1)}, "s_aux")]
)
def test_paged_attention_refuses_what_it_does_not_implement(
    kwargs: dict[str, object], named: str
) -> None:
    keys, values = pool(0)
    step = StepLayout(torch.arange(1), (SeqSpan(0, 1, 3, ((0, 3),)),))
    with pytest.raises(ValueError, match=named):
        paged_attention(
            torch.nn.Module(),
            torch.zeros(1, HEADS, 1, DIM),
            keys,
            values,
            None,
            step=step,
            **kwargs,  # type: ignore[arg-type]
        )


def test_a_step_builds_each_band_mask_once_for_all_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    keys, values = pool(9)
    spans = (SeqSpan(0, 3, 17, ((36, 4), (44, 13))), SeqSpan(3, 3, 17, ((0, 17),)))
    step = StepLayout(torch.arange(6), spans)
    built: list[Band] = []
    original = Band.mask

    def counted(self: Band, span: SeqSpan, groups: int, like: torch.Tensor) -> torch.Tensor:
        built.append(self)
        return original(self, span, groups, like)

    monkeypatch.setattr(Band, "mask", counted)
    query = torch.randn(1, HEADS, 6, DIM, generator=torch.Generator().manual_seed(10))
    for window in (4, 4, 6, 4):  # layers: two bands
        out, _ = paged_attention(
            torch.nn.Module(), query, keys, values, None, step=step, sliding_window=window
        )
        for span in spans:
            q = query[0, :, span.start : span.start + span.count]
            want = reference(q, keys, values, span, DIM**-0.5, Band(window, None))
            torch.testing.assert_close(out[0, span.start : span.start + 3], want.transpose(0, 1))
    assert built == [Band(4, None), Band(6, None)]


def test_a_window_no_shorter_than_every_context_leaves_the_kernel_its_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys, values = pool(11)
    spans = (SeqSpan(0, 1, 9, ((12, 9),)), SeqSpan(1, 3, 7, ((40, 7),)))
    step = StepLayout(torch.arange(4), spans)
    assert step.longest == 9
    query = torch.randn(1, HEADS, 4, DIM, generator=torch.Generator().manual_seed(12))
    plain, _ = paged_attention(torch.nn.Module(), query, keys, values, None, step=step)
    banded: list[Band] = []
    original = attend_band

    def counted(*args: object) -> torch.Tensor:
        banded.append(args[6])  # type: ignore[arg-type]
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr("prefixkv.engine.batch.attention.attend_band", counted)
    wide, _ = paged_attention(
        torch.nn.Module(), query, keys, values, None, step=step, sliding_window=9
    )
    assert not banded and torch.equal(wide, plain)
    narrow, _ = paged_attention(
        torch.nn.Module(), query, keys, values, None, step=step, sliding_window=8
    )
    assert banded == [Band(8, None)] * 2 and not torch.equal(narrow, plain)


def _native() -> AttentionKernel:
    try:
        return attention_kernel("native", HEADS, KV_HEADS, torch.float32, torch.device("cpu"))
    except NativeUnavailable as exc:
        unavailable(f"attention kernel 'native' cannot run here: {exc}")


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(spans(), min_size=1, max_size=3),
    window=st.one_of(st.none(), st.integers(1, 12)),
    softcap=st.one_of(st.none(), st.sampled_from([0.5, 5.0])),
    seed=st.integers(0, 2**16),
)
def test_the_native_kernel_windows_and_caps_as_the_band_does(
    steps: list[SeqSpan], window: int | None, softcap: float | None, seed: int
) -> None:
    keys, values = pool(seed)
    start, placed = 0, []
    for span in steps:  # one packed step: each span's queries after the previous ones
        placed.append(SeqSpan(start, span.count, span.context, span.runs))
        start += span.count
    kernel = _native()
    plan, others = kernel.plan(placed, torch.device("cpu"))
    step = StepLayout(torch.arange(start), others, plan, tuple(placed), kernel=kernel)
    query = torch.randn(1, HEADS, start, DIM, generator=torch.Generator().manual_seed(seed + 2))
    out, _ = paged_attention(
        torch.nn.Module(), query, keys, values, None, scaling=0.4, step=step,
        sliding_window=window, softcap=softcap,
    )  # fmt: skip
    band = Band(window, softcap)
    for span in placed:
        q = query[0, :, span.start : span.start + span.count]
        want = reference(q, keys, values, span, 0.4, band).transpose(0, 1)
        got = out[0, span.start : span.start + span.count]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
