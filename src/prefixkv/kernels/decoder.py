"""The decoder pass's records and checks: what :meth:`prefixkv.kernels.ops.Kernels.decoder`
checks before its one library call, and the argument block it fills (``csrc/abi.h``).

Every tensor is checked on every call (dtype, device, layout, contiguity, shape against the
others), every packed weight's format and size, and the work items' reach against the query
rows and pool slots; the library checks the step's slots against the pool. With the
layers' weights read off their modules, 0.27 ms a SmolLM2 step (30 layers; ``python
benchmarks/lean_pass.py`` prints it): a tenth of the lean pass's door calls and glue.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from prefixkv.kernels import abi, formats
from prefixkv.kernels.formats import PackedWeight
from prefixkv.kernels.items import INT32_MAX, AttendItems
from prefixkv.kernels.ops import _dense, _slots, _weight

_F32, _U8 = torch.float32, torch.uint8


class DecoderLayer(NamedTuple):
    """One Llama-style decoder layer's weights, as its native modules hold them now."""

    attn_norm: torch.Tensor  # [hidden] float32
    attn_eps: float
    qkv: PackedWeight  # [hidden -> (heads + 2 kv_heads) * dim]: q, then k, then v columns
    qkv_bias: torch.Tensor | None
    o_proj: PackedWeight  # [heads * dim -> hidden]
    o_bias: torch.Tensor | None
    mlp_norm: torch.Tensor  # [hidden] float32
    mlp_eps: float
    gate_up: PackedWeight  # [hidden -> 2 * width]: gate, then up columns
    gate_up_bias: torch.Tensor | None
    down: PackedWeight  # [width -> hidden]
    down_bias: torch.Tensor | None
    scale: float  # the attention's score scaling


class DecoderShape(NamedTuple):
    """The attention's heads and the MLP's width, shared by every layer."""

    heads: int
    kv_heads: int
    dim: int  # per head; even (the rotary embedding rotates halves)
    width: int  # the gated MLP's


class StepTensors(NamedTuple):
    """One step's tensors: ``hidden`` ``[rows, hidden]`` (updated in place), ``cos``/``sin``
    ``[rows, dim]``, ``pool`` ``[layers, 2, kv_heads, blocks, block_size, dim]`` (contiguous;
    at least the layers' count), ``slots`` ``[rows]`` int64: each row's pool slot."""

    hidden: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    pool: torch.Tensor
    slots: torch.Tensor


def arguments(step: StepTensors, items: AttendItems, layers: Sequence[DecoderLayer],
              shape: DecoderShape, softcap: float, lanes: int,
              threads: int) -> tuple[abi.DecoderArgs, np.ndarray]:  # fmt: skip
    """The checked argument block (and the layer table it points to, which must outlive the
    call) for a library of ``lanes`` lanes: TypeError or ValueError naming the argument and
    the problem."""
    _shape(shape)
    rows, hidden = _step(step, shape, len(layers))
    pool_slots = step.pool.shape[3] * step.pool.shape[4]
    _items(items, shape, rows, pool_slots, lanes)
    if not isinstance(softcap, float | int) or not softcap > 0:
        raise ValueError(f"softcap: a positive number (or inf) expected, got {softcap!r}")
    table = _table([_layer(i, layer, hidden, shape) for i, layer in enumerate(layers)])
    heads, kv_heads, dim, width = shape
    args = abi.DecoderArgs(
        abi.DECODER_ARGS_SIZE, abi.ABI_VERSION, step.hidden.data_ptr(), step.cos.data_ptr(),
        step.sin.data_ptr(), step.pool.data_ptr(), step.slots.data_ptr(), table.ctypes.data,
        *items.pointers, items.max_tokens, rows, hidden, width, pool_slots, len(layers), heads,
        kv_heads, dim, items.count, threads, float(softcap),
    )  # fmt: skip
    return args, table


def _shape(shape: DecoderShape) -> None:
    if not isinstance(shape, DecoderShape) or not all(isinstance(n, int) for n in shape):
        raise TypeError(f"shape: a DecoderShape of ints expected, not {shape!r}")
    heads, kv_heads, dim = shape.heads, shape.kv_heads, shape.dim
    if not all(0 < n <= INT32_MAX for n in shape) or heads % kv_heads or dim % 2:
        raise ValueError(f"shape: {shape}: positive, heads a multiple of kv_heads, dim even")


def _step(step: StepTensors, shape: DecoderShape, layers: int) -> tuple[int, int]:
    """``(rows, hidden)`` of the step's tensors, once checked against each other."""
    _dense("hidden", step.hidden, 2)
    rows, hidden = step.hidden.shape
    if rows < 1 or hidden < 1:
        raise ValueError(f"hidden: shape {tuple(step.hidden.shape)}: no rows or no features")
    for name, tensor in (("cos", step.cos), ("sin", step.sin)):
        _dense(name, tensor, 2)
        if tensor.shape != (rows, shape.dim):
            raise ValueError(f"{name}: shape {tuple(tensor.shape)}, not ({rows}, {shape.dim})")
    _dense("pool", step.pool, 6)
    pool = tuple(step.pool.shape)
    if layers < 1 or pool[0] < layers or pool[1:3] != (2, shape.kv_heads) or pool[5] != shape.dim:
        raise ValueError(f"pool: shape {pool} for {layers} layers (at least one) of 2 x "
                         f"{shape.kv_heads} kv heads of dim {shape.dim}")  # fmt: skip
    _slots(step.slots, rows)
    return rows, hidden


def _items(items: AttendItems, shape: DecoderShape, rows: int, pool_slots: int,
           lanes: int) -> None:  # fmt: skip
    if not isinstance(items, AttendItems):
        raise TypeError(f"items: AttendItems expected, not {type(items).__name__}")
    if shape.heads // shape.kv_heads * items.max_members > lanes:
        raise ValueError(f"items: {items.max_members} members of {shape.heads // shape.kv_heads}"
                         f" query heads each exceed the {lanes} lanes")  # fmt: skip
    if rows < items.query_rows or pool_slots < items.pool_slots:
        raise ValueError(f"items: they reach row {items.query_rows - 1} and slot "
                         f"{items.pool_slots - 1}; the step has {rows} rows, the pool "
                         f"{pool_slots} slots")  # fmt: skip
    if items.count * shape.kv_heads > INT32_MAX:
        raise ValueError(f"items: {items.count} items x {shape.kv_heads} kv heads: too many jobs")


def _layer(index: int, layer: DecoderLayer, hidden: int,
           shape: DecoderShape) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:  # fmt: skip
    """Layer ``index``'s entry of the table (pointers, format codes, numbers), its tensors
    checked against ``hidden`` and ``shape``."""
    if not isinstance(layer, DecoderLayer):
        raise TypeError(f"layers[{index}]: a DecoderLayer expected, not {type(layer).__name__}")
    heads, kv_heads, dim, width = shape
    norms = (_vector(index, "attn_norm", layer.attn_norm, hidden),
             _vector(index, "mlp_norm", layer.mlp_norm, hidden))  # fmt: skip
    projections = (
        ("qkv", layer.qkv, layer.qkv_bias, hidden, (heads + 2 * kv_heads) * dim),
        ("o_proj", layer.o_proj, layer.o_bias, heads * dim, hidden),
        ("gate_up", layer.gate_up, layer.gate_up_bias, hidden, 2 * width),
        ("down", layer.down, layer.down_bias, width, hidden),
    )
    codes, weights, biases = [], [], []
    for name, weight, bias, k, n in projections:
        codes.append(_packed(index, name, weight, k, n))
        weights.append(weight.data.data_ptr())
        biases.append(0 if bias is None else _vector(index, f"{name} bias", bias, n))
    numbers = (layer.attn_eps, layer.mlp_eps, layer.scale)
    if not all(isinstance(x, float | int) for x in numbers):
        raise TypeError(f"layers[{index}]: eps and scale numbers expected, not {numbers}")
    return (*norms, *weights, *biases), tuple(codes), numbers


# The checks below are one boolean expression on the way through (120 weights and 60 norms
# a step for a 30-layer model); only a refusal takes the door's own checks, which say why.


def _vector(index: int, name: str, tensor: torch.Tensor, size: int) -> int:
    """The data pointer of ``tensor``, a contiguous float32 CPU ``[size]``; TypeError or
    ValueError naming ``layers[index].name`` otherwise."""
    try:
        fine = (
            tensor.dtype is _F32
            and tensor.is_cpu
            and tensor.layout is torch.strided
            and tensor.dim() == 1
            and tensor.is_contiguous()
            and tensor.shape[0] == size
        )
    except AttributeError:  # not a tensor
        fine = False
    if not fine:
        _dense(f"layers[{index}].{name}", tensor, 1)
        raise ValueError(f"layers[{index}].{name}: {tensor.shape[0]} values, not {size}")
    return int(tensor.data_ptr())


def _packed(index: int, name: str, weight: PackedWeight, k: int, n: int) -> int:
    """The format code of ``weight``, a ``[k -> n]`` packed weight whose data the format's
    layout holds; TypeError or ValueError naming ``layers[index].name`` otherwise."""
    try:
        code, shape = _expected(weight.format, k, n)
        data = weight.data
        fine = (
            type(weight) is PackedWeight
            and (weight.in_features, weight.out_features) == (k, n)
            and data.dtype is _U8
            and data.is_cpu
            and data.layout is torch.strided
            and data.is_contiguous()
            and data.shape == shape
        )
    except (AttributeError, KeyError, TypeError, ValueError):  # not a weight, a bad format
        fine = False
    if fine:
        return code
    try:
        code = _weight(weight)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"layers[{index}].{name}: {exc}") from None
    if (weight.in_features, weight.out_features) != (k, n):
        raise ValueError(f"layers[{index}].{name}: {weight.in_features} -> "
                         f"{weight.out_features} features, not {k} -> {n}")  # fmt: skip
    return code


@functools.lru_cache(maxsize=256)
def _expected(format: str, k: int, n: int) -> tuple[int, tuple[int, int]]:
    """The format code and data shape of a ``[k -> n]`` weight packed in ``format``;
    KeyError or ValueError for an unknown format or a size it cannot hold."""
    return formats.CODES[format], (-(-n // formats.BLOCK), formats.block_bytes(format, k))


_LAYER = np.dtype(
    {
        "names": ["pointers", "formats", "numbers"],
        "formats": [(np.uint64, 10), (np.int32, 4), (np.float32, 3)],
        "offsets": [0, abi.DecoderLayer.formats.offset, abi.DecoderLayer.attn_eps.offset],
        "itemsize": abi.DECODER_LAYER_SIZE,
    }
)
"""``struct prefixkv_decoder_layer`` as a numpy record: a step's table is filled in three
array assignments (ctypes structures cost ~5 us a layer to build)."""


def _table(entries: list[tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]]) -> np.ndarray:
    table = np.zeros(len(entries), dtype=_LAYER)
    table["pointers"] = [entry[0] for entry in entries]
    table["formats"] = [entry[1] for entry in entries]
    table["numbers"] = [entry[2] for entry in entries]
    return table
