"""The K-quants' integer-dot formats (``--activations q8``: q4_k.q8, q5_k.q8, q6_k.q8): the
native kernel equals the numpy reference (prefixkv.kernels.int8_kquants) bit for bit on
whatever path this build has (AVX512-VNNI with -march=native here; AVX2 and the generic C
path under ``make test-kernels-avx2``), every row the same alone or in any call; the layout
holds the base format's planes in the base format's bytes; the result stays within the
activations' quantization error of the float32 one; the door checks them as any format."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.kernels import formats, int_layout, kint_layout, kquants
from prefixkv.kernels.formats import PackedWeight, unpack
from prefixkv.kernels.int8 import quantize_rows, reference_tensor, to_int_dot
from tests.kernels.loaded import loaded
from tests.kernels.test_linear_kquants import GGUF_TYPES, random_packed

BASES = tuple(GGUF_TYPES)


def int_packed(base: str, out: int, supers: int, seed: int) -> PackedWeight:
    return to_int_dot(random_packed(base, out, supers, seed))


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int32)


@pytest.mark.parametrize("base", BASES)
@settings(max_examples=12, deadline=None)
@given(
    st.integers(1, 2),  # super-blocks of 256 input features
    st.integers(1, 150),  # out features
    st.lists(st.integers(1, 40), min_size=1, max_size=3),  # rows of successive calls
    st.booleans(),
    st.floats(1e-3, 1e3),  # the activations' scale
    st.integers(0, 2**32 - 1),
)
def test_kernel_equals_the_reference_and_every_row_is_the_same_in_any_call(
    base: str, supers: int, out: int, counts: list[int], bias: bool, spread: float, seed: int
) -> None:
    packed = int_packed(base, out, supers, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(max(counts) + 5, supers * 256, generator=gen) * spread
    x[0, :32] = 0.0  # an all-zero group
    x[1, 16:32] = 0.0  # q6_k: a zero 16-feature sub-block beside a nonzero one
    x[-1] *= 1e3
    b = torch.randn(out, generator=gen) if bias else None
    kernels = loaded()
    alone = torch.cat([kernels.linear(x[i : i + 1], packed, b) for i in range(len(x))])
    assert torch.equal(_bits(alone), _bits(reference_tensor(x, packed, b)))
    for start, count in enumerate(counts):
        got = kernels.linear(x[start : start + count], packed, b)
        assert torch.equal(_bits(got), _bits(alone[start : start + count]))


@pytest.mark.parametrize("base", BASES)
def test_extreme_quants_and_scales_equal_the_reference(base: str) -> None:
    """Every quant at its largest (the integer sums' bounds: 16-bit pair sums in the AVX2
    path, |i| < 2^24) against activations at +-127, and at its smallest."""
    plain = random_packed(base, 70, 1, seed=5)
    planes = formats.planes_of(plain)
    for top in (True, False):
        planes["q"] = torch.full_like(planes["q"], {"q4_k": 15, "q5_k": 31, "q6_k": 63}[base] * top)
        planes["sc"] = torch.full_like(planes["sc"], -128 if base == "q6_k" else 63)
        packed = to_int_dot(PackedWeight(base, 256, 70, kquants.pack(base, planes)))
        x = torch.ones(3, 256)
        x[1] = -1.0
        x[2, ::2] = -1.0
        got = loaded().linear(x, packed, None)
        assert torch.equal(_bits(got), _bits(reference_tensor(x, packed, None)))


@pytest.mark.parametrize("base", BASES)
def test_many_rows_and_wide_rows_equal_the_reference(base: str) -> None:
    """Past the kernel's chunk of 32 rows, and in features of a real model's size."""
    packed = int_packed(base, 130, 8, seed=7)
    x = torch.randn(70, 2048)
    got = loaded().linear(x, packed, None)
    assert torch.equal(_bits(got), _bits(reference_tensor(x, packed, None)))


@pytest.mark.parametrize("base", BASES)
@settings(max_examples=8, deadline=None)
@given(st.integers(1, 2), st.integers(1, 130), st.integers(0, 2**32 - 1))
def test_the_result_is_within_the_activations_rounding_of_float32(
    base: str, supers: int, out: int, seed: int
) -> None:
    """|y_q8 - x W^T| <= sum over k of |w_k| d_x / 2 (each activation within half its group's
    step), plus float32 rounding; the float32 kernel computes x W^T."""
    packed = int_packed(base, out, supers, seed)
    x = torch.randn(3, supers * 256, generator=torch.Generator().manual_seed(seed))
    dense = unpack(packed).double()  # [out, in]
    _, d, _ = quantize_rows(x.numpy())
    steps = torch.from_numpy(d).double().repeat_interleave(32, dim=1) / 2  # [rows, in]
    bound = steps @ dense.abs().T
    exact = x.double() @ dense.T
    slack = 1e-5 * (x.double().abs() @ dense.abs().T) + 1e-30
    got = loaded().linear(x, packed, None).double()
    assert ((got - exact).abs() <= bound + slack).all()


@pytest.mark.parametrize("base", BASES)
@settings(max_examples=10, deadline=None)
@given(st.integers(1, 130), st.integers(1, 2), st.integers(0, 2**32 - 1))
def test_the_layout_keeps_the_base_formats_planes_in_its_bytes(
    base: str, out: int, supers: int, seed: int
) -> None:
    plain = random_packed(base, out, supers, seed)
    packed = to_int_dot(plain)
    assert packed.format == int_layout.INT_DOT[base]
    assert packed.data.shape == plain.data.shape and packed.nbytes == plain.nbytes
    assert torch.equal(int_layout.restore(base, packed.data), plain.data)
    assert torch.equal(unpack(packed), unpack(plain))
    planes = formats.planes_of(plain)
    again = kint_layout.unpack(base, kint_layout.pack(base, planes), out, supers * 256)
    assert all(torch.equal(again[name], planes[name]) for name in planes)


@pytest.mark.parametrize("base", BASES)
def test_one_quant_lands_where_the_header_says(base: str) -> None:
    """Column 37's quant at k = 8 p + 4 h + i of group 3 set alone to its largest: its low
    bits in lo's nibble h of byte (p, 37, i), its high bits in hb as the layout says."""
    planes = {name: torch.zeros_like(plane) for name, plane in
              formats.planes_of(random_packed(base, 64, 1, seed=1)).items()}  # fmt: skip
    p, h, i, group = 2, 1, 3, 3
    planes["q"][37, 0, group * 32 + 8 * p + 4 * h + i] = {"q4_k": 15, "q5_k": 31, "q6_k": 63}[base]
    data = kint_layout.pack(base, planes)[0]
    high = {"q4_k": 0, "q5_k": 256, "q6_k": 512}[base]
    start = (1280 if base != "q6_k" else 1152) + group * (high + 1024)
    lo = data[start + high :].view(-1)
    assert lo[(p * 64 + 37) * 4 + i] == 15 << (4 * h)
    assert int(lo.sum()) + int(data[start : start + high].sum()) == (15 << (4 * h)) + {
        "q4_k": 0, "q5_k": 1 << (2 * p + h), "q6_k": 3 << (2 * (2 * (p % 2) + h))}[base]  # fmt: skip
    if base == "q6_k":
        assert data[start + ((p // 2) * 64 + 37) * 4 + i] == 3 << (2 * (2 * (p % 2) + h))
    elif base == "q5_k":
        assert data[start + 37 * 4 + i] == 1 << (2 * p + h)


@pytest.mark.parametrize("base", BASES)
def test_the_door_checks_a_k_integer_format_as_any_other(base: str) -> None:
    name = int_layout.INT_DOT[base]
    packed = int_packed(base, 70, 1, seed=3)
    with pytest.raises(TypeError, match="x: the native kernels take a float32 CPU tensor"):
        loaded().linear(torch.randn(2, 256, dtype=torch.float64), packed, None)
    with pytest.raises(ValueError, match="x: 224 features, the weight takes 256"):
        loaded().linear(torch.randn(2, 224), packed, None)
    short = PackedWeight(name, 256, 70, packed.data[:, :-1].contiguous())
    with pytest.raises(ValueError, match=r"^weight.data: shape \(2, \d+\) does not hold 70 x 256"):
        loaded().linear(torch.randn(2, 256), short, None)
    wrong_k = dataclasses.replace(packed, in_features=224)
    with pytest.raises(ValueError, match=rf"^weight: {name}: in_features 224 is not a multiple"):
        loaded().linear(torch.randn(2, 224), wrong_k, None)
    with pytest.raises(ValueError, match=r"does not hold 70 x 256"):
        loaded().linear(
            torch.randn(2, 256), dataclasses.replace(packed, data=packed.data.view(1, -1)), None
        )
