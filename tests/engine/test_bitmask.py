"""The numpy bitmask path against the torch reference it replaced: the same logits, bit for
bit, for any bitmask, vocabulary width (narrower, equal to or wider than the bitmask's) and
dtype; and the private copy equals the logits and never shares their memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.engine.bitmask import apply_bitmask, apply_bitmask_reference, private_copy

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, torch.Tensor]:
    words = draw(st.integers(1, 6))
    # Words biased to the edges (none, all, the sign bit alone) as well as arbitrary ones.
    word = st.one_of(st.sampled_from([0, -1, -(2**31), 1]), st.integers(-(2**31), 2**31 - 1))
    bitmask = np.array(draw(st.lists(word, min_size=words, max_size=words)), dtype=np.int32)
    vocab = draw(st.integers(1, 32 * words + 40))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31))
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 5
    return bitmask, logits.to(dtype)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_the_numpy_path_equals_the_torch_reference(case: tuple[np.ndarray, torch.Tensor]) -> None:
    bitmask, logits = case
    fast, slow = logits.clone(), logits.clone()
    assert apply_bitmask(fast, bitmask) is fast  # in place
    apply_bitmask_reference(slow, bitmask)
    assert torch.equal(fast, slow)
    words = len(bitmask)
    allowed = [
        i < 32 * words and bool(int(bitmask[i // 32]) >> (i % 32) & 1) for i in range(len(logits))
    ]
    assert [not bool(v.isinf()) for v in fast] == allowed  # randn is finite


def test_a_row_of_a_wider_batch_is_masked_in_place() -> None:
    """A strided view (one row of ``[rows, vocab]``, or a column) is masked where it lies."""
    batch = torch.randn(3, 70)
    bitmask = np.array([0x0F0F0F0F, 0x7, 0], dtype=np.int32)
    want = apply_bitmask_reference(batch[:, 1].clone(), bitmask)
    apply_bitmask(batch[:, 1], bitmask)
    assert torch.equal(batch[:, 1], want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_private_copy_is_equal_and_apart(dtype: torch.dtype) -> None:
    with torch.inference_mode():
        logits = torch.randn(4, 100).to(dtype)[2]  # an inference tensor, a view, as the runner's
    copy = private_copy(logits)
    assert torch.equal(copy, logits) and copy.dtype == dtype
    copy[0] = 123.0  # writable outside inference mode, and not the batch's memory
    assert logits[0] != 123.0
