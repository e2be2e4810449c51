"""The decoder pass's kernel (``csrc/decoder.c``, through ``Kernels.decoder``): a whole step
of decoder layers in one call gives, bit for bit, the hidden states and the KV that the
kernels give called one by one through the door in the lean pass's order, for every packed
format, with and without biases, capped or not, on one thread or two; and the door refuses
every wrong argument by name before anything is written."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from prefixkv.kernels import abi
from prefixkv.kernels.decoder import DecoderLayer, DecoderShape, StepTensors
from prefixkv.kernels.formats import PackedWeight, pack_bf16, pack_f32, pack_gguf
from prefixkv.kernels.items import AttendItems
from prefixkv.kernels.ops import Kernels
from tests.kernels.loaded import loaded

SHAPE = DecoderShape(heads=4, kv_heads=2, dim=16, width=96)
HIDDEN, LAYERS, BLOCKS, BLOCK_SIZE = 64, 2, 4, 8
GGUF = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0,
        "q4_1": GGMLQuantizationType.Q4_1}  # fmt: skip
# The step: a prefill chunk of 5 tokens (rows 0-4, slots 3-7) beside two decoding sequences
# (rows 5 and 6) whose earlier tokens the pool holds (slots 10-18 and 20-25).
SLOTS = [3, 4, 5, 6, 7, 19, 26]


def packed(format: str, out: int, k: int, gen: torch.Generator) -> PackedWeight:
    weight = torch.randn(out, k, generator=gen) * k**-0.5
    if format == "f32":
        return pack_f32(weight)
    if format == "bf16":
        return pack_bf16(weight.bfloat16())
    return pack_gguf(format, quantize(weight.numpy(), GGUF[format]), k)


def layer(format: str, biased: bool, gen: torch.Generator) -> DecoderLayer:
    heads, kv_heads, dim, width = SHAPE
    q_width = (heads + 2 * kv_heads) * dim

    def bias(n: int) -> torch.Tensor | None:
        return torch.randn(n, generator=gen) * 0.1 if biased else None

    return DecoderLayer(
        1 + 0.1 * torch.randn(HIDDEN, generator=gen), 1e-5,
        packed(format, q_width, HIDDEN, gen), bias(q_width),
        packed(format, HIDDEN, heads * dim, gen), bias(HIDDEN),
        1 + 0.1 * torch.randn(HIDDEN, generator=gen), 1e-6,
        packed(format, 2 * width, HIDDEN, gen), bias(2 * width),
        packed(format, HIDDEN, width, gen), bias(HIDDEN), dim**-0.5,
    )  # fmt: skip


def step_items() -> AttendItems:
    prefill = list(range(3, 8))
    first, second = [*range(10, 19), 19], [*range(20, 26), 26]
    return AttendItems(
        [0, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 10, 7], [0] * 7,
        [0, 5, 15, 22], prefill + first + second, [-1] * 22,
    )  # fmt: skip


def case(format: str = "f32", biased: bool = False, seed: int = 0) -> dict[str, Any]:
    """A valid call's arguments (fresh tensors)."""
    gen = torch.Generator().manual_seed(seed)
    rows = len(SLOTS)
    angles = torch.rand(rows, SHAPE.dim // 2, generator=gen) * 6.0
    angles = torch.cat([angles, angles], dim=1)
    pool = torch.randn(LAYERS, 2, SHAPE.kv_heads, BLOCKS, BLOCK_SIZE, SHAPE.dim, generator=gen)
    step = StepTensors(torch.randn(rows, HIDDEN, generator=gen), angles.cos(), angles.sin(),
                       pool, torch.tensor(SLOTS))  # fmt: skip
    layers = [layer(format, biased, gen) for _ in range(LAYERS)]
    return {"step": step, "items": step_items(), "layers": layers, "shape": SHAPE,
            "softcap": math.inf}  # fmt: skip


def one_by_one(kernels: Kernels, step: StepTensors, items: AttendItems,
               layers: list[DecoderLayer], shape: DecoderShape,
               softcap: float) -> torch.Tensor:  # fmt: skip
    """The lean pass's layer loop (engine/batch/lean.py) on the door's kernels: the new
    hidden states; writes the KV into ``step.pool``."""
    heads, kv_heads, dim, width = shape
    h, rows = step.hidden, step.hidden.shape[0]
    pool = step.pool.view(LAYERS, 2, kv_heads, BLOCKS * BLOCK_SIZE, dim)
    for index, w in enumerate(layers):
        qkv = kernels.linear(kernels.rms_norm(h, w.attn_norm, w.attn_eps), w.qkv, w.qkv_bias)
        kernels.rotary(qkv, step.cos, step.sin, heads + kv_heads)
        split = qkv.view(rows, heads + 2 * kv_heads, dim).transpose(0, 1)
        keys, values = pool[index][0], pool[index][1]
        kernels.store(keys, values, split[heads : heads + kv_heads], split[heads + kv_heads :],
                      step.slots)  # fmt: skip
        attended = h.new_empty(rows, heads, dim)
        kernels.attend(items, split[:heads], keys, values, attended, w.scale, softcap)
        h = h + kernels.linear(attended.view(rows, heads * dim), w.o_proj, w.o_bias)
        normed = kernels.rms_norm(h, w.mlp_norm, w.mlp_eps)
        gate_up = kernels.linear(normed, w.gate_up, w.gate_up_bias)
        h = h + kernels.linear(kernels.silu_mul(gate_up, width), w.down, w.down_bias)
    return h


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("softcap", [math.inf, 3.0])
@pytest.mark.parametrize("biased", [False, True])
@pytest.mark.parametrize("format", ["f32", "bf16", *GGUF])
def test_one_call_equals_the_kernels_one_by_one(format: str, biased: bool, softcap: float,
                                                threads: int) -> None:  # fmt: skip
    kernels, args = loaded(), case(format, biased, seed=len(format) + biased)
    args["softcap"] = softcap
    step: StepTensors = args["step"]
    alone = {**args, "step": step._replace(hidden=step.hidden.clone(), pool=step.pool.clone())}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        kernels.decoder(**args)
    finally:
        torch.set_num_threads(before)
    want = one_by_one(kernels, **alone)
    assert torch.isfinite(want).all()
    assert same_bits(step.hidden, want)
    assert same_bits(step.pool, alone["step"].pool)
    assert not same_bits(step.pool, case(format, biased, seed=len(format) + biased)["step"].pool)


def with_layer(index: int, **change: Any) -> Callable[[dict[str, Any]], None]:
    def breaking(args: dict[str, Any]) -> None:
        args["layers"][index] = args["layers"][index]._replace(**change)

    return breaking


def with_step(**change: Any) -> Callable[[dict[str, Any]], None]:
    def breaking(args: dict[str, Any]) -> None:
        args["step"] = args["step"]._replace(**change)

    return breaking


def with_arg(**change: Any) -> Callable[[dict[str, Any]], None]:
    return lambda args: args.update(change)


ROWS = len(SLOTS)
BREAKS: list[tuple[str, Callable[[dict[str, Any]], None], type[Exception], str]] = [
    ("hidden-dtype", with_step(hidden=torch.zeros(ROWS, HIDDEN, dtype=torch.float64)),
     TypeError, "hidden"),
    ("hidden-strided", with_step(hidden=torch.zeros(HIDDEN, ROWS).T), ValueError, "hidden"),
    ("hidden-no-rows", with_step(hidden=torch.zeros(0, HIDDEN)), ValueError, "hidden"),
    ("cos-shape", with_step(cos=torch.zeros(ROWS, 8)), ValueError, "cos"),
    ("sin-dtype", with_step(sin=torch.zeros(ROWS, 16).half()), TypeError, "sin"),
    ("pool-kv-heads", with_step(pool=torch.zeros(LAYERS, 2, 3, BLOCKS, BLOCK_SIZE, 16)),
     ValueError, "pool"),
    ("pool-layers", with_step(pool=torch.zeros(1, 2, 2, BLOCKS, BLOCK_SIZE, 16)),
     ValueError, "pool"),
    ("pool-strided", with_step(pool=torch.zeros(LAYERS, 2, 2, BLOCKS, 16, BLOCK_SIZE)
                               .transpose(4, 5)), ValueError, "pool"),
    ("slots-dtype", with_step(slots=torch.tensor(SLOTS, dtype=torch.int32)), TypeError,
     "slots"),
    ("slots-length", with_step(slots=torch.tensor(SLOTS[:-1])), ValueError, "slots"),
    ("slot-outside", with_step(slots=torch.tensor([*SLOTS[:-1], 32])), ValueError, "slot"),
    ("slot-negative", with_step(slots=torch.tensor([-1, *SLOTS[1:]])), ValueError, "slot"),
    ("items-rows", with_step(hidden=torch.zeros(6, HIDDEN), cos=torch.zeros(6, 16),
                             sin=torch.zeros(6, 16), slots=torch.tensor(SLOTS[:6])),
     ValueError, "items"),
    ("items-type", with_arg(items=[0, 1]), TypeError, "items"),
    ("layers-none", with_arg(layers=[]), ValueError, "pool"),
    ("layer-type", with_arg(layers=[None, None]), TypeError, r"layers\[0\]"),
    ("norm-size", with_layer(1, mlp_norm=torch.ones(HIDDEN + 1)), ValueError,
     r"layers\[1\].mlp_norm"),
    ("norm-dtype", with_layer(0, attn_norm=torch.ones(HIDDEN).double()), TypeError,
     r"layers\[0\].attn_norm"),
    ("qkv-features", with_layer(1, qkv=pack_f32(torch.zeros(96, HIDDEN))), ValueError,
     r"layers\[1\].qkv"),
    ("down-features", with_layer(0, down=pack_f32(torch.zeros(HIDDEN, 64))), ValueError,
     r"layers\[0\].down"),
    ("weight-data", with_layer(0, o_proj=PackedWeight("f32", 64, 64, torch.zeros(1, 2))),
     TypeError, r"layers\[0\].o_proj"),
    ("weight-format", with_layer(0, gate_up=PackedWeight("f16", 64, 192, torch.zeros(
        3, 2, dtype=torch.uint8))), ValueError, r"layers\[0\].gate_up"),
    ("bias-size", with_layer(1, down_bias=torch.zeros(HIDDEN - 1)), ValueError,
     r"layers\[1\].down bias"),
    ("bias-dtype", with_layer(0, qkv_bias=torch.zeros(128).double()), TypeError,
     r"layers\[0\].qkv bias"),
    ("eps-type", with_layer(0, attn_eps="small"), TypeError, r"layers\[0\]"),
    ("shape-odd-dim", with_arg(shape=DecoderShape(4, 2, 15, 96)), ValueError, "shape"),
    ("shape-heads", with_arg(shape=DecoderShape(5, 2, 16, 96)), ValueError, "shape"),
    ("shape-type", with_arg(shape=(4, 2, 16, 96)), TypeError, "shape"),
    ("softcap", with_arg(softcap=0.0), ValueError, "softcap"),
]  # fmt: skip


@pytest.mark.parametrize(("breaking", "error", "words"),
                         [pytest.param(*b[1:], id=b[0]) for b in BREAKS])  # fmt: skip
def test_a_wrong_argument_is_refused_by_name_before_anything_is_written(
    breaking: Callable[[dict[str, Any]], None], error: type[Exception], words: str
) -> None:
    args = case()
    breaking(args)
    step: StepTensors = args["step"]
    before = [t.clone() for t in (step.hidden, step.pool) if isinstance(t, torch.Tensor)]
    with pytest.raises(error, match=words):
        loaded().decoder(**args)
    after = [t for t in (step.hidden, step.pool) if isinstance(t, torch.Tensor)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), "written"


@pytest.mark.parametrize(("field", "status"), [("DECODER_ARGS_SIZE", "size"),
                                               ("ABI_VERSION", "version")])  # fmt: skip
def test_the_library_refuses_a_decoder_block_of_another_size_or_version(
    field: str, status: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernels, args = loaded(), case()
    hidden = args["step"].hidden.clone()
    monkeypatch.setattr(abi, field, getattr(abi, field) + 8)
    with pytest.raises(RuntimeError, match=f"refused the call .*another {status}"):
        kernels.decoder(**args)
    assert torch.equal(args["step"].hidden, hidden)
    monkeypatch.undo()
    kernels.decoder(**args)
    assert not torch.equal(args["step"].hidden, hidden)


@pytest.mark.parametrize("field", ["DECODER_ARGS_SIZE", "DECODER_LAYER_SIZE"])
def test_a_library_of_another_decoder_layout_is_not_spoken_to(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefixkv.kernels import build

    library = build.load()
    monkeypatch.setattr(abi, field, getattr(abi, field) - 8)
    with pytest.raises(RuntimeError, match="decoder"):
        Kernels(library)
