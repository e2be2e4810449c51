"""The native linear kernel on weights at the precision they ship in (bf16, Q8_0, Q4_0,
Q4_1): bit for bit the f32 kernel on the dequantized weights, every row the same in any
call; and the packing, against gguf-py's own dequantizer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.engine.native_linear import NativeLinearLayer
from prefixkv.kernels import formats
from prefixkv.kernels.formats import (
    GGUF_GROUP_BYTES,
    PackedWeight,
    concat,
    pack_bf16,
    pack_f32,
    pack_gguf,
    unpack,
)
from prefixkv.kernels.int_layout import reorder
from tests.kernels.linear_checks import check_against_f32
from tests.kernels.loaded import loaded

GGUF_TYPES = {
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
}
FORMATS = ("f32", "bf16", *GGUF_TYPES)
# the same blocks, integer dots on 8-bit rows (the K-quants': tests/kernels/test_linear_int8_k.py)
INT_FORMATS = tuple(formats.INT_DOT[base] for base in GGUF_TYPES)


def gguf_rows(format: str, out: int, in_features: int, rng: np.random.Generator) -> np.ndarray:
    """Random GGUF rows ``[out, row bytes]``: finite fp16 scales (and mins) of varied
    magnitude, some zero, the quants' bytes uniform."""
    groups, size = in_features // 32, GGUF_GROUP_BYTES[format]
    raw = rng.integers(0, 256, size=(out, groups, size), dtype=np.uint8)
    scales = 2 if format == "q4_1" else 1
    values = rng.standard_normal((out, groups, scales)) * 10.0 ** rng.integers(-4, 2, (out, 1, 1))
    values[rng.random(values.shape) < 0.05] = 0.0
    raw[..., : 2 * scales] = values.astype(np.float16).view(np.uint8)
    return raw.reshape(out, groups * size)


def random_packed(format: str, out: int, in_features: int, seed: int) -> PackedWeight:
    if format in INT_FORMATS:
        base = random_packed(format.removesuffix(".q8"), out, in_features, seed)
        return PackedWeight(format, in_features, out, reorder(base.format, base.data))
    rng = np.random.default_rng(seed)
    if format in GGUF_TYPES:
        return pack_gguf(format, gguf_rows(format, out, in_features, rng), in_features)
    weight = torch.from_numpy(rng.standard_normal((out, in_features), dtype=np.float32))
    return pack_f32(weight) if format == "f32" else pack_bf16(weight.bfloat16())


@pytest.mark.parametrize("format", GGUF_TYPES)
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 150), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_pack_gguf_then_unpack_is_gguf_py_s_dequantize(
    format: str, out: int, groups: int, seed: int
) -> None:
    rows = gguf_rows(format, out, groups * 32, np.random.default_rng(seed))
    want = dequantize(rows, GGUF_TYPES[format])  # [out, in] float32
    got = unpack(pack_gguf(format, rows, groups * 32))
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.from_numpy(want))  # NaN-free: scales are finite


@pytest.mark.parametrize("format", ["f32", "bf16"])
def test_pack_then_unpack_gives_the_weight_back(format: str) -> None:
    weight = torch.randn(70, 40)
    packed = pack_f32(weight) if format == "f32" else pack_bf16(weight.bfloat16())
    assert torch.equal(unpack(packed), weight if format == "f32" else weight.bfloat16().float())


@pytest.mark.parametrize("format", FORMATS + INT_FORMATS)
def test_block_bytes_agree_with_the_library(format: str) -> None:
    packed = random_packed(format, 130, 96, seed=1)
    assert packed.data.shape == (3, formats.block_bytes(format, 96))
    assert packed.data.dtype == torch.uint8 and packed.data.is_contiguous()
    assert packed.nbytes == 3 * loaded().linear_block_bytes(format, 96)
    assert loaded().linear_block == formats.BLOCK


@pytest.mark.parametrize("format", [*GGUF_TYPES, "q6_k"])
@pytest.mark.parametrize("in_features", [256, 2048, 8192])
def test_a_packed_block_holds_the_files_bytes_for_its_columns(
    format: str, in_features: int
) -> None:
    """fp16 scales kept as the file stores them: a block of BLOCK columns is BLOCK file rows'
    bytes, reordered (resident memory = the file's size for these formats)."""
    file_rows = formats.gguf_row_bytes(format, in_features) * formats.BLOCK
    assert formats.block_bytes(format, in_features) == file_rows
    assert loaded().linear_block_bytes(format, in_features) == file_rows


def test_the_library_knows_no_other_format_or_quantized_size() -> None:
    assert loaded()._lib.prefixkv_linear_block_bytes(len(formats.CODES), 256) == -1
    assert loaded().linear_block_bytes("q4_1", 48) == -1
    with pytest.raises(ValueError, match="q4_0: in_features 48 is not a multiple of 32"):
        formats.block_bytes("q4_0", 48)


@pytest.mark.parametrize("format", FORMATS)
@settings(max_examples=12, deadline=None)
@given(
    st.integers(1, 6),  # in features / 32
    st.integers(1, 200).filter(lambda n: n % 64 != 0),  # out features: a partial last block
    # row counts of successive calls, on both sides of the kernel's switch at 48 rows
    st.lists(st.integers(1, 70), min_size=1, max_size=3),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_kernel_on_a_format_is_the_f32_kernel_on_its_dequantized_weight(
    format: str, groups: int, out: int, counts: list[int], bias: bool, seed: int
) -> None:
    """Bit for bit, every row alone or in any batch; and near ``x @ W.T``."""
    packed = random_packed(format, out, groups * 32, seed)
    check_against_f32(packed, counts, bias, seed)


@pytest.mark.parametrize("format", FORMATS + INT_FORMATS)
def test_joined_siblings_are_the_siblings_side_by_side(format: str) -> None:
    parts = [random_packed(format, out, 64, seed) for seed, out in enumerate((70, 30, 64))]
    joined = concat(parts)
    assert (joined.format, joined.in_features, joined.out_features) == (format, 64, 164)
    assert torch.equal(unpack(joined), torch.cat([unpack(p) for p in parts]))
    x = torch.randn(5, 64)
    got = loaded().linear(x, joined, None)
    assert torch.equal(got, torch.cat([loaded().linear(x, p, None) for p in parts], dim=1))


def test_concat_refuses_what_does_not_join() -> None:
    with pytest.raises(ValueError, match="no weights"):
        concat([])
    with pytest.raises(ValueError, match="q8_0 x 64 features beside f32 x 64"):
        concat([random_packed("f32", 3, 64, 0), random_packed("q8_0", 3, 64, 0)])


def test_pack_gguf_refuses_what_it_cannot_read() -> None:
    rows = gguf_rows("q8_0", 4, 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"rows: \[out, 34\] expected .* got \(4, 68\)"):
        pack_gguf("q8_0", rows, 32)
    with pytest.raises(ValueError, match="format: one of"):
        pack_gguf("q5_0", rows, 64)
    with pytest.raises(TypeError, match="rows: a uint8 numpy array"):
        pack_gguf("q8_0", rows.astype(np.int16), 64)
    with pytest.raises(ValueError, match="in_features 48 is not a multiple of 32"):
        pack_gguf("q4_0", rows, 48)
    with pytest.raises(TypeError, match=r"weight: a 2-dimensional torch\.float32"):
        pack_f32(torch.randn(4, 4).bfloat16())


@pytest.mark.parametrize("format", (*GGUF_TYPES, *INT_FORMATS))
def test_a_quantized_weight_of_another_size_is_refused_by_the_door(format: str) -> None:
    packed = random_packed(format, 70, 64, seed=3)
    x = torch.randn(2, 64)
    wrong_k = dataclasses.replace(packed, in_features=48)
    with pytest.raises(ValueError, match=f"^weight: {format}: in_features 48 is not a multiple"):
        loaded().linear(torch.randn(2, 48), wrong_k, None)
    short = dataclasses.replace(packed, data=packed.data[:, :-1].contiguous())
    with pytest.raises(ValueError, match=r"^weight.data: shape \(2, \d+\) does not hold 70 x 64"):
        loaded().linear(x, short, None)


def test_a_layer_from_a_packed_weight_is_the_layer_on_its_dequantized_weight() -> None:
    packed = random_packed("q4_1", 100, 64, seed=4)
    bias = torch.randn(100)
    layer = NativeLinearLayer.from_packed(packed, bias, loaded())
    plain = torch.nn.Linear(64, 100)
    with torch.no_grad():
        plain.weight.copy_(unpack(packed))
        plain.bias.copy_(bias)
    x = torch.randn(3, 7, 64)
    with torch.inference_mode():
        assert torch.equal(layer(x), NativeLinearLayer(plain, loaded())(x))
    assert "q4_1" in repr(layer)
