"""Paged attention against plain attention over a contiguous K/V, and the model check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from prefixkv.engine.batch.attention import (
    PagedKV,
    SeqSpan,
    StepLayout,
    attend,
    causal_mask,
    check_supported,
    paged_attention,
)
from prefixkv.engine.kvbridge import UnsupportedModelError

from ..tiny import tiny_llama

KV_HEADS, GROUPS, DIM, SLOTS = 2, 3, 8, 48
HEADS = KV_HEADS * GROUPS


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pool(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(KV_HEADS, SLOTS, DIM, generator=gen),
        torch.randn(KV_HEADS, SLOTS, DIM, generator=gen),
    )


def reference(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, span: SeqSpan, scale: float | None
) -> torch.Tensor:
    """Contiguous K/V of the span's context, kv heads repeated per query head, an explicit
    causal mask at the chunk's offset."""
    k = torch.cat([keys[:, a : a + c] for a, c in span.runs], dim=1)
    v = torch.cat([values[:, a : a + c] for a, c in span.runs], dim=1)
    assert k.shape[1] == span.context
    k, v = k.repeat_interleave(GROUPS, dim=0), v.repeat_interleave(GROUPS, dim=0)
    n = q.shape[1]
    query_pos = torch.arange(span.context - n, span.context)[:, None]
    allowed = torch.arange(span.context)[None, :] <= query_pos
    mask = torch.zeros(n, span.context).masked_fill(~allowed, float("-inf"))
    out: torch.Tensor = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out


CASES = {
    "decode_one_run": SeqSpan(0, 1, 7, ((8, 7),)),
    "decode_several_runs": SeqSpan(0, 1, 11, ((12, 4), (0, 4), (28, 3))),
    "decode_runs_of_one_slot": SeqSpan(0, 1, 3, ((40, 1), (4, 1), (20, 1))),
    "prefill_chunk_at_offset_several_runs": SeqSpan(0, 3, 11, ((12, 4), (0, 4), (28, 3))),
    "prefill_whole_context": SeqSpan(0, 5, 5, ((16, 5),)),
    "prefill_chunk_one_run": SeqSpan(0, 4, 13, ((20, 13),)),
}


@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_attend_matches_contiguous_attention(case: str, scale: float | None) -> None:
    span = CASES[case]
    keys, values = pool()
    q = torch.randn(HEADS, span.count, DIM, generator=torch.Generator().manual_seed(1))
    got = attend(q, keys, values, span, GROUPS, scale)
    assert got.shape == (HEADS, span.count, DIM)
    torch.testing.assert_close(got, reference(q, keys, values, span, scale), rtol=1e-5, atol=1e-5)


def test_paged_attention_packs_every_sequence_of_a_step() -> None:
    keys, values = pool(2)
    spans = (
        SeqSpan(0, 1, 11, ((12, 4), (0, 4), (28, 3))),  # decode
        SeqSpan(1, 3, 7, ((36, 4), (44, 3))),  # a prefill chunk
        SeqSpan(4, 1, 2, ((4, 2),)),  # decode
    )
    step = StepLayout(torch.arange(5), spans)
    query = torch.randn(1, HEADS, 5, DIM, generator=torch.Generator().manual_seed(3))
    out, weights = paged_attention(
        torch.nn.Module(), query, keys, values, None, scaling=0.25, step=step
    )
    assert weights is None and out.shape == (1, 5, HEADS, DIM)
    for span in spans:
        q = query[0, :, span.start : span.start + span.count]
        expected = reference(q, keys, values, span, 0.25).transpose(0, 1)
        got = out[0, span.start : span.start + span.count]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_step_builds_each_prefill_mask_once_for_all_layers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys, values = pool(4)
    spans = (SeqSpan(0, 3, 7, ((36, 4), (44, 3))), SeqSpan(3, 3, 7, ((8, 7),)))
    step = StepLayout(torch.arange(6), spans)
    built: list[tuple[int, int]] = []

    def counted(n: int, context: int, groups: int, like: torch.Tensor) -> torch.Tensor:
        built.append((n, context))
        return causal_mask(n, context, groups, like)

    monkeypatch.setattr("prefixkv.engine.batch.attention.causal_mask", counted)
    query = torch.randn(1, HEADS, 6, DIM, generator=torch.Generator().manual_seed(5))
    outs = [
        paged_attention(torch.nn.Module(), query, keys, values, None, step=step)[0]
        for _layer in range(3)
    ]
    assert built == [(3, 7)]  # two spans of one shape, three layers: one mask
    for span in spans:
        q = query[0, :, span.start : span.start + span.count]
        expected = reference(q, keys, values, span, None).transpose(0, 1)
        for out in outs:
            got = out[0, span.start : span.start + span.count]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_causal_mask_hides_exactly_the_later_keys() -> None:
    mask = causal_mask(2, 5, 2, torch.zeros(1, dtype=torch.float64))
    assert mask.dtype == torch.float64 and mask.shape == (4, 5)
    seen = mask == 0
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(seen, expected.repeat(2, 1))
    assert torch.isneginf(mask[~seen]).all()


def test_paged_attention_outside_a_step_raises() -> None:
    keys, values = pool()
    with pytest.raises(RuntimeError, match="batch runner"):
        paged_attention(torch.nn.Module(), torch.zeros(1, HEADS, 1, DIM), keys, values, None)


def test_paged_kv_writes_each_token_to_its_slot() -> None:
    layers, blocks, size = 2, 3, 4
    data = torch.zeros(layers, 2, KV_HEADS, blocks, size, DIM)
    slots = torch.tensor([9, 2, 3])
    kv = PagedKV(data, StepLayout(slots, (SeqSpan(0, 3, 3, ((0, 3),)),)))
    k, v = torch.randn(1, KV_HEADS, 3, DIM), torch.randn(1, KV_HEADS, 3, DIM)
    keys, values = kv.update(k, v, 1)
    assert keys.shape == values.shape == (KV_HEADS, blocks * size, DIM)
    for i, slot in enumerate(slots.tolist()):
        assert torch.equal(data[1, 0, :, slot // size, slot % size], k[0, :, i])
        assert torch.equal(data[1, 1, :, slot // size, slot % size], v[0, :, i])
        assert torch.equal(keys[:, slot], k[0, :, i])
    assert not data[0].any()  # another layer: untouched
    assert len(kv) == layers and kv.get_seq_length() == 0


# --- check_supported ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama() -> Any:
    return tiny_llama()


def test_check_supported_accepts_llama(llama: Any) -> None:
    check_supported(llama)
    assert llama.config._attn_implementation != "prefixkv_paged"  # restored


def test_check_supported_rejects_a_layer_that_bypasses_the_attention_interface(
    llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    attn = llama.model.layers[1].self_attn
    original = attn.forward

    def own_attention(*args: Any, **kwargs: Any) -> Any:
        # This layer keeps no cache and runs its own attention: right on the probe's three
        # tokens, wrong on any cached context, so the check must count it out.
        config = llama.config
        before = config._attn_implementation
        config._attn_implementation = "sdpa"
        kwargs["past_key_values"] = None
        try:
            return original(*args, **kwargs)
        finally:
            config._attn_implementation = before

    monkeypatch.setattr(attn, "forward", own_attention)
    with pytest.raises(UnsupportedModelError, match=r"\(llama family: full causal.*1 of 2 layers"):
        check_supported(llama)


def _mistral(window: int) -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=window,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return MistralForCausalLM(config).eval()


def test_check_supported_accepts_a_window_shorter_than_the_probe() -> None:
    check_supported(_mistral(1))  # each token sees only itself: the band applies it


def test_check_supported_rejects_a_model_whose_logits_differ() -> None:
    # Bidirectional attention (EmbeddingGemma's kind of config): the paged path is causal, so
    # the probe's logits differ and the model is refused.
    from transformers import Gemma3TextConfig

    from tests.models.tiny_families import LLAMA_LIKE, tiny_model

    config = Gemma3TextConfig(**LLAMA_LIKE, head_dim=16, use_bidirectional_attention=True)
    with pytest.raises(UnsupportedModelError, match="max logit difference"):
        check_supported(tiny_model(config))


def test_check_supported_rejects_a_model_that_fails_on_the_probe(
    llama: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("unexpected keyword argument 'step'")

    monkeypatch.setattr(llama.model.layers[0].self_attn, "forward", broken)
    with pytest.raises(UnsupportedModelError, match="unexpected keyword"):
        check_supported(llama)
