"""The sampler's greedy choice on numpy against ``torch.argmax``: the same token for any
logits (ties, infinities, NaNs, every dtype, strided views), and the sampler's greedy path
goes through it."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.engine.request import SamplingParams
from prefixkv.engine.sampling import Sampler, greedy_token

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Few distinct values so that ties are common, plus the extremes.
VALUES = st.sampled_from([-math.inf, -3.0, -0.0, 0.0, 1.5, 2.0, math.inf, math.nan])


@st.composite
def logits(draw: st.DrawFn) -> torch.Tensor:
    values = draw(st.lists(st.one_of(VALUES, st.floats(-60, 60)), min_size=1, max_size=300))
    tensor = torch.tensor(values, dtype=torch.float64).to(draw(st.sampled_from(DTYPES)))
    step = draw(st.integers(1, 3))  # a strided view, as a row picked from a wider tensor
    return tensor[::step]


@settings(max_examples=400, deadline=None)
@given(logits())
def test_greedy_token_is_torch_argmax(values: torch.Tensor) -> None:
    assert greedy_token(values) == int(torch.argmax(values))


@pytest.mark.parametrize("dtype", DTYPES)
def test_first_of_equal_maxima_and_first_nan(dtype: torch.dtype) -> None:
    tied = torch.tensor([0.0, 4.0, 1.0, 4.0], dtype=dtype)
    assert greedy_token(tied) == 1
    nan = torch.tensor([5.0, math.nan, 9.0, math.nan], dtype=dtype)
    assert greedy_token(nan) == 1 == int(torch.argmax(nan))


def test_inference_tensors_of_a_model_width() -> None:
    with torch.inference_mode():
        values = torch.randn(3, 49_152, generator=torch.Generator().manual_seed(0))
    for row in values:
        assert greedy_token(row) == int(torch.argmax(row))
    assert greedy_token(values[:, 7]) == int(torch.argmax(values[:, 7]))


def test_the_greedy_sampler_chooses_the_argmax() -> None:
    values = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    values[417] = 50.0
    assert Sampler(SamplingParams(temperature=0.0))(values) == 417
