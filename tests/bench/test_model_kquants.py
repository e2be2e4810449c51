"""The K-quant quantiser that ``make-model --weights q4_k_m|q5_k_m`` writes with: valid
blocks (gguf-py reads them) whose values are within one quantisation step of the input."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.bench.model_kquants import quantize_k

# bytes per super-block, and the quantisation levels of a sub-block's range
KINDS = {"Q4_K": (144, 15), "Q5_K": (176, 31), "Q6_K": (210, 62)}


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None)
# magnitudes where an fp16 scale of a sub-block step (range / 15 / 63) is still precise
@given(st.integers(1, 9), st.integers(1, 3), st.integers(-3, 2), st.integers(0, 2**32 - 1))
def test_the_blocks_round_trip_through_gguf_py_within_a_step(
    kind: str, rows: int, supers: int, exponent: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal((rows, supers * 256)) * 10.0**exponent).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = 0.0
    if seed % 3 == 0:
        values[0] = np.abs(values[0])  # a row with no negative value: mins of zero
    size, levels = KINDS[kind]
    blocks = quantize_k(values, kind)
    assert blocks.dtype == np.uint8 and blocks.shape == (rows, supers * size)
    got = dequantize(blocks, GGMLQuantizationType[kind]).reshape(values.shape)
    assert np.isfinite(got).all()
    per_super = values.reshape(-1, 256)
    spread = per_super.max(1) - np.minimum(per_super.min(1), 0)  # Q6_K: within -max..max
    spread = np.maximum(spread, 2 * np.abs(per_super).max(1)) if kind == "Q6_K" else spread
    error = np.abs(got - values).reshape(-1, 256).max(1)
    # one step of the sub-block's range, widened by the 6-bit (8-bit) scale's rounding up
    assert (error <= spread / levels * 1.1 + 1e-30).all()
    assert np.abs(got - values).mean() <= np.abs(values).mean() / 4 + 1e-30


def test_the_quantiser_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="one of"):
        quantize_k(np.zeros((1, 256), np.float32), "Q3_K")
    with pytest.raises(ValueError, match="a multiple of 256"):
        quantize_k(np.zeros((1, 128), np.float32), "Q4_K")
