"""Rows read out of a packed weight's column blocks (a tied head serving as the embedding's
table): bit for bit those rows of the reference dequantizer, for every format, any rows, in
any order, repeated, at any position in a block (a partial last block too)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.kernels.column_rows import rows_of
from prefixkv.kernels.formats import PackedWeight, unpack
from prefixkv.kernels.int8 import to_int_dot
from tests.kernels import test_linear_formats, test_linear_kquants

FORMATS = (
    "f32",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q4_k",
    "q5_k",
    "q6_k",
    *test_linear_formats.INT_FORMATS,
    "q4_k.q8",
    "q5_k.q8",
    "q6_k.q8",
)


def _packed(format: str, out: int, spans: int, seed: int) -> PackedWeight:
    """A random weight of ``out`` rows in ``format``: ``spans`` groups of 32 input features
    (a K-quant: super-blocks of 256)."""
    if format in test_linear_kquants.GGUF_TYPES:
        return test_linear_kquants.random_packed(format, out, spans, seed)
    if format.removesuffix(".q8") in test_linear_kquants.GGUF_TYPES:
        return to_int_dot(test_linear_kquants.random_packed(format[:4], out, spans, seed))
    return test_linear_formats.random_packed(format, out, spans * 32, seed)


@pytest.mark.parametrize("format", FORMATS)
@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 200),  # rows of the weight: whole and partial blocks of 64
    st.integers(1, 3),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=40),  # ids, modulo the rows
    st.integers(0, 2**32 - 1),
)
def test_rows_are_the_dequantized_weights_rows(
    format: str, out: int, spans: int, picks: list[int], seed: int
) -> None:
    packed = _packed(format, out, spans, seed)
    ids = torch.tensor([p % out for p in picks])
    got = rows_of(packed, ids)
    assert got.dtype == torch.float32 and got.shape == (len(picks), packed.in_features)
    want = unpack(packed)[ids]
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # -0.0 told apart
