"""The int8/int4 block codecs: error bounds, sizes, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.cache.layout import KVLayout
from prefixkv.tiers.codec import RawCodec
from prefixkv.tiers.quantize import (
    CODECS,
    Int4Codec,
    Int8Codec,
    QuantizedCodec,
    codec_for_id,
    payload_bytes,
)

QUANTIZED = [Int8Codec(), Int4Codec()]
SMOLLM2 = KVLayout(30, 3, 64)  # SmolLM2-135M in float32


def _params(payload: bytes, layout: KVLayout, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero points and steps read from the payload as the module docstring lays it out,
    broadcast to ``[L, 2, H, S, D]``."""
    layers, heads, dim = layout.num_layers, layout.num_kv_heads, layout.head_dim
    keys, values = layers * heads * dim, layers * heads * size
    p = torch.from_numpy(np.frombuffer(payload, np.float16, 2 * (keys + values)).astype(np.float32))
    kz, ks, vz, vs = p.split([keys, keys, values, values])
    zero, step = torch.empty(layers, 2, heads, size, dim), torch.empty(layers, 2, heads, size, dim)
    k_shape, v_shape = (layers, heads, 1, dim), (layers, heads, size, 1)
    zero[:, 0], step[:, 0] = kz.view(k_shape), ks.view(k_shape)
    zero[:, 1], step[:, 1] = vz.view(v_shape), vs.view(v_shape)
    return zero, step


def _ideal_steps(block: torch.Tensor, levels: int) -> torch.Tensor:
    """(max - min) / levels per group: keys per channel, values per token."""
    keys, values = block[:, 0], block[:, 1]
    k = (keys.amax(2, keepdim=True) - keys.amin(2, keepdim=True)) / levels
    v = (values.amax(3, keepdim=True) - values.amin(3, keepdim=True)) / levels
    return torch.stack((k.expand_as(keys), v.expand_as(values)), dim=1)


@st.composite
def blocks(draw: st.DrawFn) -> tuple[KVLayout, int, torch.Tensor]:
    layout = KVLayout(
        draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 8, 64]))
    )
    size = draw(st.sampled_from([1, 2, 16, 32]))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 30.0, 1000.0]))
    offset = draw(st.sampled_from([0.0, -3.0, 250.0]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shape = (layout.num_layers, 2, layout.num_kv_heads, size, layout.head_dim)
    block = torch.randn(shape, generator=gen) * scale + offset
    if draw(st.booleans()):  # key outlier channels, as real models have
        block[:, 0, :, :, 0] *= 20
    return layout, size, block.clamp(-6e4, 6e4)  # float16's range: beyond it, encode refuses


@pytest.mark.parametrize("codec", QUANTIZED, ids=lambda c: c.name)
@settings(max_examples=60, deadline=None)
@given(case=blocks())
def test_round_trip_within_half_a_step(
    codec: QuantizedCodec, case: tuple[KVLayout, int, torch.Tensor]
) -> None:
    layout, size, block = case
    payload = codec.encode(block)
    assert len(payload) == codec.payload_bytes(layout, size)
    restored = codec.decode(memoryview(payload), layout, size)
    assert restored.shape == block.shape and restored.dtype == layout.dtype
    zero, step = _params(payload, layout, size)
    error = (restored - block).abs()
    # Half the stored step, plus float32 rounding of x - zero and zero + q * step.
    slack = 4 * torch.finfo(torch.float32).eps * (block.abs() + zero.abs() + codec.levels * step)
    assert bool((error <= step / 2 + slack).all()), float((error - step / 2).max())
    # Outward rounding to float16 widens a step by little: two float16 ulps of the step, plus
    # one ulp of the zero point spread over the levels (2**-24: the smallest subnormal).
    widen = step * 2**-9 + (zero.abs() * 2**-10 + 2**-24) / codec.levels + 2**-24
    ideal = _ideal_steps(block, codec.levels)
    constant = (ideal == 0) & (zero == block)  # a constant float16 group: step 1, code 0
    assert torch.equal(restored[constant], block[constant])
    assert bool((step <= ideal + widen)[~constant].all())
    assert bool((zero <= block).all())  # the zero point never exceeds the group's minimum


@pytest.mark.parametrize("codec", QUANTIZED, ids=lambda c: c.name)
@pytest.mark.parametrize("value", [0.0, 1.0, -2.5, 0.1, 1000.3, 60000.0])
def test_constant_blocks(codec: QuantizedCodec, value: float) -> None:
    layout = KVLayout(2, 2, 8)
    block = torch.full((2, 2, 2, 16, 8), value)
    restored = codec.decode(memoryview(codec.encode(block)), layout, 16)
    if float(torch.tensor(value, dtype=torch.float16)) == value:
        assert torch.equal(restored, block)  # step 1, code 0, the zero point is the value
    else:  # within half a step of a range no wider than the value's float16 ulp
        ulp = abs(value) * 2**-10
        assert float((restored - block).abs().max()) <= ulp / codec.levels


def test_payload_size_formula_and_bytes_per_token() -> None:
    # 30 layers, 3 kv heads, head_dim 64, 16 tokens: codes 2*30*3*16*64 elements; per-group
    # float16 zero and step: 30*3*64 key channels + 30*3*16 value tokens.
    elements, groups = 2 * 30 * 3 * 16 * 64, 30 * 3 * 64 + 30 * 3 * 16
    assert payload_bytes(Int8Codec(), SMOLLM2, 16) == elements + 4 * groups == 213_120
    assert payload_bytes(Int4Codec(), SMOLLM2, 16) == elements // 2 + 4 * groups == 120_960
    assert payload_bytes(RawCodec(), SMOLLM2, 16) == SMOLLM2.block_bytes(16) == 737_280
    per_token = {n: payload_bytes(c, SMOLLM2, 16) / 16 for n, c in CODECS.items()}
    assert per_token == {"none": 46_080, "int8": 13_320, "int4": 7_560}
    for codec in QUANTIZED:  # sizes depend on the layout and block size only
        for size in (1, 16, 64):
            block = torch.randn(30, 2, 3, size, 64)
            assert len(codec.encode(block)) == codec.payload_bytes(SMOLLM2, size)
    half = KVLayout(30, 3, 64, torch.float16)  # scales are float16 whatever the cache holds
    assert payload_bytes(Int8Codec(), half, 16) == 213_120


@pytest.mark.parametrize("codec", QUANTIZED, ids=lambda c: c.name)
def test_wrong_sizes_and_unencodable_blocks_raise(codec: QuantizedCodec) -> None:
    layout = KVLayout(2, 2, 8)
    payload = codec.encode(torch.randn(2, 2, 2, 16, 8))
    for bad in (payload[:-1], payload + b"\0", b""):
        with pytest.raises(ValueError, match="bytes"):
            codec.decode(memoryview(bad), layout, 16)
    with pytest.raises(ValueError, match="bytes"):
        codec.decode(memoryview(payload), layout, 8)  # another block size
    with pytest.raises(ValueError, match="bytes"):
        codec.decode(memoryview(payload), KVLayout(2, 1, 8), 16)  # another layout
    for value in (float("nan"), float("inf"), -70000.0):
        block = torch.zeros(2, 2, 2, 16, 8)
        block[1, 0, 1, 3, 2] = value
        with pytest.raises(ValueError, match="float16"):
            codec.encode(block)
    with pytest.raises(ValueError, match="block is"):
        codec.encode(torch.zeros(2, 3, 2, 16, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_returns_the_layout_dtype_from_read_only_payloads(dtype: torch.dtype) -> None:
    layout = KVLayout(2, 2, 8, dtype)
    block = torch.randn(2, 2, 2, 16, 8).to(dtype)
    for codec in CODECS.values():
        payload = codec.encode(block)  # bytes: a read-only buffer
        restored = codec.decode(memoryview(payload), layout, 16)
        assert restored.dtype == dtype and restored.shape == block.shape
        if codec.name == "none":
            assert torch.equal(restored, block)
        else:
            assert float((restored.float() - block.float()).abs().max()) < 0.5


def test_int4_packs_low_nibble_first() -> None:
    layout = KVLayout(1, 1, 2)
    # Keys per channel over 2 tokens: channel 0 spans [0, 15] (codes 0 then 15), channel 1
    # is constant 0. Values per token over 2 channels.
    block = torch.tensor([[[[[0.0, 0.0], [15.0, 0.0]]], [[[0.0, 15.0], [15.0, 0.0]]]]])
    payload = Int4Codec().encode(block)
    codes = payload[2 * 2 * (2 + 2) :]
    # keys [t0c0, t0c1, t1c0, t1c1] = [0, 0, 15, 0]; values [0, 15, 15, 0]
    assert codes == bytes([0x00, 0x0F, 0xF0, 0x0F])
    assert torch.equal(Int4Codec().decode(memoryview(payload), layout, 2), block)


def test_none_is_exact_and_ids_resolve() -> None:
    block = torch.randn(30, 2, 3, 16, 64)
    none = CODECS["none"]
    assert torch.equal(none.decode(memoryview(none.encode(block)), SMOLLM2, 16), block)
    assert [(c.id, c.name) for c in CODECS.values()] == [(0, "none"), (1, "int8"), (2, "int4")]
    for codec in CODECS.values():
        assert codec_for_id(codec.id) is codec
    with pytest.raises(ValueError, match=r"unknown block codec id 7; known: 0 \(none\)"):
        codec_for_id(7)
