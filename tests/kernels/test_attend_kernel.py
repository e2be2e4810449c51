"""The native attention kernel: equal to causal attention over each whole context (random
block tables, shared prefixes, more members than one item holds, prefill chunks), planned
once per step; and its KV store, equal to index_copy_."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.engine.batch.attention import SeqSpan, StepLayout, paged_attention
from prefixkv.engine.batch.cascade import CascadeKernel
from prefixkv.engine.batch.native import NativeKernel, NativePlan
from prefixkv.kernels.build import NativeUnavailable
from tests.engine.batch.test_attention import DIM, GROUPS, HEADS, KV_HEADS, pool, reference
from tests.engine.batch.test_cascade import block_tables

CPU = torch.device("cpu")


def kernel() -> NativeKernel:
    try:
        return NativeKernel.create(GROUPS, torch.float32, CPU)
    except NativeUnavailable as exc:  # CI has gcc: fail there, say why anywhere
        pytest.fail(f"the native kernel does not build here: {exc}")


def check_against_reference(spans: list[SeqSpan], keys: Any, values: Any, seed: int) -> None:
    rows = sum(s.count for s in spans)
    query = torch.randn(1, HEADS, rows, DIM, generator=torch.Generator().manual_seed(seed))
    plan, others = kernel().plan(spans, CPU)
    assert others == ()  # prefill chunks too
    out, _ = paged_attention(
        torch.nn.Module(), query, keys, values, None, scaling=None, step=StepLayout(
            torch.arange(rows), others, plan
        )
    )  # fmt: skip
    for span in spans:
        part = slice(span.start, span.start + span.count)
        want = reference(query[0, :, part], keys, values, span, None)  # [heads, n, dim]
        torch.testing.assert_close(out[0, part], want.transpose(0, 1), rtol=1e-5, atol=1e-5)


@settings(max_examples=150, deadline=None)
@given(block_tables(), st.data())
def test_random_block_tables_match_attention_over_each_context(
    spans: list[SeqSpan], data: st.DataObject
) -> None:
    """Decoding sequences and prefill chunks (the last ``count`` tokens of a context) over
    random block tables, in one step."""
    step, row = [], 0
    for span in spans:
        count = data.draw(st.sampled_from([1, 1, 2, 5, 6, span.context]))
        step.append(SeqSpan(row, min(count, span.context), span.context, span.runs))
        row += step[-1].count
    keys, values = (torch.randn(KV_HEADS, 128 * 4, DIM) for _ in range(2))
    check_against_reference(step, keys, values, data.draw(st.integers(0, 2**16)))


def test_decoders_of_one_document_share_items_and_prefill_chunks_get_their_own() -> None:
    keys, values = pool(1)
    spans, row = [], 0
    for i in range(7):  # seven decoders over slots 0-11, a prefill chunk of two among them
        if i == 3:
            spans.append(SeqSpan(row, 2, 6, ((40, 6),)))
            row += 2
        spans.append(SeqSpan(row, 1, 13 + i % 3, ((0, 12), (20 + 3 * i, 1 + i % 3))))
        row += 1
    check_against_reference(spans, keys, values, 3)
    plan, _ = kernel().plan(spans, CPU)
    assert isinstance(plan, NativePlan)
    items = plan.items
    per_item = 16 // GROUPS  # five members of three query heads fill an item's lanes
    # five and two decoders, then the chunk's two queries
    assert np.diff(items.member_start).tolist() == [per_item, 7 - per_item, 2]
    assert items.sees[-2:].tolist() == [5, 6]  # causal: each query sees up to itself
    first = items.slot[items.token_start[0] : items.token_start[1]]
    assert first[:12].tolist() == list(range(12))  # the document, once for five members
    assert sorted(items.rows.tolist()) == list(range(row))  # every query row once
    assert items.query_rows == row and items.pool_slots == 46  # the chunk's slots 40-45


def test_a_long_prefill_chunk_is_split_into_causal_items() -> None:
    keys, values = pool(2)
    spans = [SeqSpan(0, 12, 20, ((0, 8), (24, 12)))]  # queries 8-19 of a 20-token context
    plan, _ = kernel().plan(spans, CPU)
    assert isinstance(plan, NativePlan)
    items = plan.items
    assert np.diff(items.member_start).tolist() == [5, 5, 2]
    assert items.sees.tolist() == list(range(9, 21))
    assert np.diff(items.token_start).tolist() == [13, 18, 20] and items.max_tokens == 20
    check_against_reference(spans, keys, values, 0)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.booleans(), st.integers(0, 2**16))
def test_store_writes_what_index_copy_writes(tokens: int, strided: bool, seed: int) -> None:
    """The native plan's KV write against the PyTorch plan's, with the new values a
    transposed view (as transformers passes them) when ``strided``."""
    gen = torch.Generator().manual_seed(seed)
    slots = torch.randperm(128, generator=gen)[:tokens]
    new_keys = torch.randn(KV_HEADS, tokens, DIM, generator=gen)
    rows = torch.randn(tokens, KV_HEADS, DIM, generator=gen)
    new_values = rows.transpose(0, 1) if strided else rows.transpose(0, 1).contiguous()
    pools = [[torch.randn(KV_HEADS, 128, DIM, generator=gen) for _ in range(2)]]
    pools.append([t.clone() for t in pools[0]])
    native_plan, _ = kernel().plan([], CPU)
    native_plan.store(*pools[0], new_keys, new_values, slots)
    CascadeKernel().plan([], CPU)[0].store(*pools[1], new_keys, new_values, slots)
    for got, want in zip(pools[0], pools[1], strict=True):
        assert torch.equal(got, want)
