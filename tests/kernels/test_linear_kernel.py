"""The native linear kernel: the product of nn.Linear, and every row the same in any call."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.engine.native_linear import NativeLinearLayer
from tests.kernels.loaded import loaded


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 200),  # in features
    st.integers(1, 300),  # out features: whole and partial column blocks
    st.booleans(),
    # row counts of successive calls, on both sides of the kernel's switch at 48 rows from
    # chunked passes over k to whole ones
    st.lists(st.integers(1, 60), min_size=1, max_size=4),
    st.integers(0, 2**16),
)
def test_rows_equal_nn_linear_and_come_out_the_same_in_any_call(
    in_features: int, out_features: int, bias: bool, counts: list[int], seed: int
) -> None:
    """Each call's rows are a slice of one set of rows; every row must equal, bit for bit,
    that row computed alone (so a token's activations never depend on its batch)."""
    gen = torch.Generator().manual_seed(seed)
    plain = torch.nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(out_features, in_features, generator=gen))
        if bias:
            plain.bias.copy_(torch.randn(out_features, generator=gen))
    layer = NativeLinearLayer(plain, loaded())
    x = torch.randn(max(counts) + 3, in_features, generator=gen)
    with torch.inference_mode():
        alone = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
        torch.testing.assert_close(alone, plain(x), rtol=1e-4, atol=1e-4)
        for start, count in enumerate(counts):
            assert torch.equal(layer(x[start : start + count]), alone[start : start + count])


def test_leading_dimensions_and_strided_inputs() -> None:
    plain = torch.nn.Linear(24, 70)
    layer = NativeLinearLayer(plain, loaded())
    x = torch.randn(2, 5, 48)[..., ::2]  # [2, 5, 24], not contiguous
    with torch.inference_mode():
        got = layer(x)
        assert got.shape == (2, 5, 70)
        torch.testing.assert_close(got, plain(x), rtol=1e-5, atol=1e-5)
