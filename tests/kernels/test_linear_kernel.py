"""The native linear kernel: the product of nn.Linear, and every row the same in any call."""

from __future__ import annotations

import pytest
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


def layer() -> tuple[torch.nn.Linear, NativeLinearLayer]:
    plain = torch.nn.Linear(24, 70)
    return plain, NativeLinearLayer(plain, loaded())


@pytest.mark.parametrize(
    ("x", "named"),
    [
        (torch.randn(3, 24, dtype=torch.float64), "torch.float64 on cpu"),
        (torch.randn(3, 24, dtype=torch.bfloat16), "torch.bfloat16 on cpu"),
        (torch.randn(3, 24, dtype=torch.float16), "torch.float16 on cpu"),
        (torch.randn(3, 24, device="meta"), "torch.float32 on meta"),
    ],
    ids=["float64", "bfloat16", "float16", "meta"],
)
def test_another_dtype_or_device_is_refused_with_the_way_out(x: torch.Tensor, named: str) -> None:
    """Refused, not converted: a result in another dtype or from another kernel would be
    stored under a model fingerprint that names this kernel."""
    with pytest.raises(
        TypeError, match=f"^NativeLinearLayer: .*not {named}.*--linear-kernel torch"
    ):
        layer()[1](x)


def test_another_last_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match=r"input of shape \(4, 6\), the layer takes 24 features"):
        layer()[1](torch.randn(4, 6))  # as many numbers as one row of 24: not reshaped


def test_under_autocast_float32_runs_and_a_lower_dtype_names_autocast() -> None:
    plain, native = layer()
    x = torch.randn(5, 24)
    with torch.inference_mode():
        want = native(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(native(x), want)  # not an autocast op: float32 stays float32
            with pytest.raises(TypeError, match=r"autocast to torch\.bfloat16 is on"):
                native(plain(x))  # nn.Linear under autocast gives bfloat16


def test_a_layer_moved_to_another_dtype_is_refused_by_the_door() -> None:
    """The packed weight is bytes (uint8): ``.to(float64)`` leaves it and moves the bias."""
    _, native = layer()
    native.to(torch.float64)
    with pytest.raises(TypeError, match=r"^bias: .*not torch\.float64"):
        native(torch.randn(2, 24))


def test_a_weight_of_another_dtype_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"^NativeLinearLayer: .*not torch\.bfloat16"):
        NativeLinearLayer(torch.nn.Linear(4, 4).bfloat16(), loaded())
