"""The native linear kernel on GGUF's K-quants (Q4_K, Q5_K, Q6_K) kept as the file stores
them: packing against gguf-py's dequantizer, the kernel bit for bit the f32 kernel on the
dequantized weight in any batch, joined siblings, the door's size checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.kernels import formats, kquants
from prefixkv.kernels.formats import PackedWeight, concat, pack_gguf, unpack
from tests.kernels.linear_checks import check_against_f32
from tests.kernels.loaded import loaded

GGUF_TYPES = {
    "q4_k": GGMLQuantizationType.Q4_K,
    "q5_k": GGMLQuantizationType.Q5_K,
    "q6_k": GGMLQuantizationType.Q6_K,
}
# where each super-block keeps its fp16 scales: q4_k/q5_k d and dmin first, q6_k d last
_HALVES = {"q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def kquant_rows(format: str, out: int, supers: int, rng: np.random.Generator) -> np.ndarray:
    """Random GGUF rows ``[out, supers * bytes]``: finite fp16 d (and dmin) of varied
    magnitude, some zero; every other byte (6-bit scales, quants) uniform."""
    size = kquants.GGUF_SUPER_BYTES[format]
    raw = rng.integers(0, 256, size=(out, supers, size), dtype=np.uint8)
    for at in _HALVES[format]:
        values = rng.standard_normal((out, supers)) * 10.0 ** rng.integers(-6, 1, (out, 1))
        values[rng.random(values.shape) < 0.05] = 0.0
        raw[..., at : at + 2] = values.astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(out, supers * size)


def random_packed(format: str, out: int, supers: int, seed: int) -> PackedWeight:
    rows = kquant_rows(format, out, supers, np.random.default_rng(seed))
    return pack_gguf(format, rows, supers * kquants.SUPER)


@pytest.mark.parametrize("format", GGUF_TYPES)
@settings(max_examples=20, deadline=None)
@given(st.integers(1, 150), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_pack_gguf_then_unpack_is_gguf_py_s_dequantize(
    format: str, out: int, supers: int, seed: int
) -> None:
    rows = kquant_rows(format, out, supers, np.random.default_rng(seed))
    want = torch.from_numpy(dequantize(rows, GGUF_TYPES[format]))  # [out, in] float32
    packed = pack_gguf(format, rows, supers * kquants.SUPER)
    got = unpack(packed)
    assert got.dtype == torch.float32
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # -0.0 told apart
    # the packing keeps the planes: packing them again gives the same bytes
    assert torch.equal(formats._pack(format, packed.in_features, formats._planes(packed)).data,
                       packed.data)  # fmt: skip


@pytest.mark.parametrize("format", GGUF_TYPES)
def test_block_bytes_agree_with_the_library_and_stay_near_the_file(format: str) -> None:
    packed = random_packed(format, 130, 2, seed=1)
    assert packed.data.shape == (3, formats.block_bytes(format, 512))
    assert packed.nbytes == 3 * loaded().linear_block_bytes(format, 512)
    file_bytes = formats.gguf_row_bytes(format, 512) * 64  # one block's columns
    assert file_bytes <= formats.block_bytes(format, 512) <= 1.05 * file_bytes
    assert loaded().linear_block_bytes(format, 384) == -1


@pytest.mark.parametrize("format", GGUF_TYPES)
@settings(max_examples=10, deadline=None)
@given(
    st.integers(1, 3),  # in features / 256
    st.integers(1, 200).filter(lambda n: n % 64 != 0),  # out features: a partial last block
    # row counts of successive calls, on both sides of the kernel's switches at 18, 48 rows
    st.lists(st.integers(1, 70), min_size=1, max_size=3),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_kernel_on_a_k_quant_is_the_f32_kernel_on_its_dequantized_weight(
    format: str, supers: int, out: int, counts: list[int], bias: bool, seed: int
) -> None:
    """Bit for bit, every row alone or in any batch; and near ``x @ W.T``."""
    packed = random_packed(format, out, supers, seed)
    check_against_f32(packed, counts, bias, seed)


@pytest.mark.parametrize("format", GGUF_TYPES)
def test_joined_siblings_are_the_siblings_side_by_side(format: str) -> None:
    parts = [random_packed(format, out, 1, seed) for seed, out in enumerate((70, 30, 64))]
    joined = concat(parts)
    assert (joined.format, joined.in_features, joined.out_features) == (format, 256, 164)
    assert torch.equal(unpack(joined), torch.cat([unpack(p) for p in parts]))
    x = torch.randn(5, 256)
    got = loaded().linear(x, joined, None)
    assert torch.equal(got, torch.cat([loaded().linear(x, p, None) for p in parts], dim=1))


@pytest.mark.parametrize("format", GGUF_TYPES)
def test_a_k_quant_of_another_size_is_refused(format: str) -> None:
    packed = random_packed(format, 70, 1, seed=3)
    wrong_k = dataclasses.replace(packed, in_features=224)
    with pytest.raises(ValueError, match=f"^weight: {format}: in_features 224 is not a multiple"):
        loaded().linear(torch.randn(2, 224), wrong_k, None)
    short = dataclasses.replace(packed, data=packed.data[:, :-1].contiguous())
    with pytest.raises(ValueError, match=r"^weight.data: shape \(2, \d+\) does not hold 70 x 256"):
        loaded().linear(torch.randn(2, 256), short, None)
    rows = kquant_rows(format, 4, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"rows: \[out, \d+\] expected"):
        pack_gguf(format, rows[:, :-1], 256)
    with pytest.raises(ValueError, match="in_features 128 is not a multiple of 256"):
        pack_gguf(format, rows, 128)
