"""Weights for the native linear kernel, packed at the precision they ship in.

A :class:`PackedWeight` holds a ``[out, in]`` weight as column blocks of ``BLOCK`` output
columns, each ``block_bytes(format, in)`` bytes (layouts in ``csrc/linear.c`` and
``csrc/linear_legacy.h``, ``csrc/linear_kquants.h``): ``f32``, ``bf16``, GGUF's ``q8_0``,
``q4_0``, ``q4_1`` and its K-quants ``q4_k``, ``q5_k``, ``q6_k``
(:mod:`prefixkv.kernels.kquants`), each with its fp16 (and 6/8-bit) scales kept as the file
stores them and widened in the kernel's registers (a widening is exact). Columns past ``out_features`` are zero weights
(zero scale, zero min, zero q). Every format's dequantized value is exact in fp32 and equals
what gguf-py's ``dequantize`` gives, so the kernel on a packed weight computes bit for bit
what it computes on ``pack_f32(unpack(weight))``.

Bytes per weight, file -> packed: f32 4 -> 4; bf16 2 -> 2; q8_0, q4_0, q4_1 and q6_k the
file's (1.0625, 0.5625, 0.625, 0.8203: the same bytes, reordered); q4_k 0.5625 -> 0.578;
q5_k 0.6875 -> 0.703 (their 6-bit scales stored a byte each).

The integer-dot formats ``q8_0.q8``, ``q4_0.q8``, ``q4_1.q8``, ``q4_k.q8``, ``q5_k.q8``,
``q6_k.q8`` hold the same bytes as their base format, each group's quants reordered
(:mod:`prefixkv.kernels.int_layout`, :mod:`prefixkv.kernels.kint_layout`); their kernel
quantizes the input rows to 8 bits first (:mod:`prefixkv.kernels.int8`), so it is not the f32
kernel on the dequantized weight, though :func:`unpack` gives the same weight.

Packing goes through *planes*: per format, tensors with one leading row per output column
(``w``; or ``d``, ``q`` and for q4_1 ``m``, per group of 32 input features; ``d`` and
``m`` float16, as the file stores them). Columns are
independent in every layout, so sibling projections are joined by concatenating planes
(:func:`concat`), whatever their sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prefixkv.kernels import columns, int_layout, kquants
from prefixkv.kernels.columns import as_bytes, columns_first, columns_last

BLOCK = columns.BLOCK  # output columns per block: prefixkv_linear_block()
GROUP = 32  # input features per quantized group (GGUF's block size)
# the kernel's format codes
CODES = {"f32": 0, "bf16": 1, "q8_0": 2, "q4_0": 3, "q4_1": 4, "q4_k": 5, "q5_k": 6, "q6_k": 7,
         "q8_0.q8": 8, "q4_0.q8": 9, "q4_1.q8": 10, "q4_k.q8": 11, "q5_k.q8": 12,
         "q6_k.q8": 13}  # fmt: skip
# the integer-dot formats (8-bit activations; csrc/linear_int8.h, prefixkv.kernels.int8)
INT_DOT = int_layout.INT_DOT
QUANTIZED = ("q8_0", "q4_0", "q4_1", *kquants.K_FORMATS)
# GGUF bytes per group of 32: fp16 d (and m for q4_1), then the quants
GGUF_GROUP_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
# Our bytes per group of one column block: fp16 header(s), then q
_HEADER = {"q8_0": 1, "q4_0": 1, "q4_1": 2}  # fp16 vectors of BLOCK: d, then m
_Q_BYTES = {"q8_0": GROUP * BLOCK, "q4_0": GROUP * BLOCK // 2, "q4_1": GROUP * BLOCK // 2}

Planes = dict[str, torch.Tensor]  # name -> [out, ...]
_F32, _F16 = torch.float32, torch.float16


@dataclass(frozen=True)
class PackedWeight:
    """A ``[out_features, in_features]`` weight in ``format`` as ``data``: uint8, CPU,
    contiguous, ``[ceil(out_features / BLOCK), block_bytes(format, in_features)]``."""

    format: str
    in_features: int
    out_features: int
    data: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes the kernel streams for one pass over the weight."""
        return self.data.numel()


def block_bytes(format: str, in_features: int) -> int:
    """Bytes of one column block. ValueError for an unknown format, or a quantized one whose
    ``in_features`` is not a multiple of GROUP (a K-quant: of kquants.SUPER); an integer-dot
    format's are its base format's."""
    base = int_layout.BASE.get(format)
    if base is not None:
        unit = kquants.SUPER if base in kquants.K_FORMATS else GROUP
        if in_features % unit:
            raise ValueError(f"{format}: in_features {in_features} is not a multiple of {unit}")
        return block_bytes(base, in_features)
    if format in kquants.K_FORMATS:
        if in_features % kquants.SUPER:
            raise ValueError(f"{format}: in_features {in_features} is not a multiple of "
                             f"{kquants.SUPER}")  # fmt: skip
        return in_features // kquants.SUPER * kquants.PACKED_SUPER_BYTES[format]
    if format == "f32":
        return in_features * BLOCK * 4
    if format == "bf16":
        return in_features * BLOCK * 2
    if format not in QUANTIZED:
        raise ValueError(f"format: one of {sorted(CODES)} expected, got {format!r}")
    if in_features % GROUP:
        raise ValueError(f"{format}: in_features {in_features} is not a multiple of {GROUP}")
    return in_features // GROUP * (_HEADER[format] * BLOCK * 2 + _Q_BYTES[format])


def pack_f32(weight: torch.Tensor) -> PackedWeight:
    """``weight``: ``[out, in]`` float32 (any strides; copied). TypeError for another dtype."""
    _expect(weight, torch.float32)
    return _pack("f32", weight.shape[1], {"w": weight.detach().cpu()})


def pack_bf16(weight: torch.Tensor) -> PackedWeight:
    """``weight``: ``[out, in]`` bfloat16 (any strides; copied). TypeError for another dtype."""
    _expect(weight, torch.bfloat16)
    return _pack("bf16", weight.shape[1], {"w": weight.detach().cpu()})


def gguf_row_bytes(format: str, in_features: int) -> int:
    """Bytes of one GGUF row of ``in_features`` weights in a quantized ``format``; ValueError
    as :func:`block_bytes`."""
    block_bytes(format, in_features)  # the multiple of GROUP or SUPER
    if format in kquants.K_FORMATS:
        return in_features // kquants.SUPER * kquants.GGUF_SUPER_BYTES[format]
    return in_features // GROUP * GGUF_GROUP_BYTES[format]


def pack_gguf(format: str, rows: np.ndarray, in_features: int) -> PackedWeight:
    """A GGUF tensor's rows as the file stores them: ``rows`` uint8 ``[out,
    gguf_row_bytes(format, in_features)]`` (q8_0: fp16 d, int8 q[32]; q4_0: fp16 d, qs[16];
    q4_1: fp16 d, fp16 m, qs[16]; element j is qs[j] & 15, element j + 16 is qs[j] >> 4;
    the K-quants' super-blocks of 256: :mod:`prefixkv.kernels.kquants`). Copies; ValueError
    for another format or shape, TypeError for another dtype."""
    if format not in QUANTIZED:
        raise ValueError(f"format: one of {QUANTIZED} expected, got {format!r}")
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8:
        raise TypeError(f"rows: a uint8 numpy array expected, not {getattr(rows, 'dtype', rows)}")
    size = gguf_row_bytes(format, in_features)
    if rows.ndim != 2 or rows.shape[1] != size or rows.shape[0] < 1:
        raise ValueError(f"rows: [out, {size}] expected for {in_features} features "
                         f"of {format}, got {rows.shape}")  # fmt: skip
    # A read-only array (a view of a mapped file) is copied: torch shares only writable ones.
    readable = np.ascontiguousarray(rows) if rows.flags.writeable else rows.copy()
    return _pack(format, in_features, gguf_planes(format, torch.from_numpy(readable)))


def gguf_planes(format: str, rows: torch.Tensor) -> Planes:
    """GGUF rows (uint8 ``[n, groups * GGUF_GROUP_BYTES[format]]``, a quantized format, the
    caller checked) as planes: ``d`` (and ``m`` for q4_1) float16 ``[n, groups]``, ``q``
    ``[n, groups, 32]`` (int8 for q8_0, the 4-bit values as uint8 otherwise); a K-quant's
    as :func:`prefixkv.kernels.kquants.gguf_planes`. New tensors."""
    if format in kquants.K_FORMATS:
        return kquants.gguf_planes(format, rows)
    raw = rows.view(rows.shape[0], -1, GGUF_GROUP_BYTES[format])
    scales = 2 if format == "q4_1" else 1
    planes = {
        name: raw[..., 2 * i : 2 * i + 2].contiguous().view(torch.float16)[..., 0]
        for i, name in enumerate(("d", "m")[:scales])
    }  # [n, groups]
    quants = raw[..., 2 * scales :]  # [n, groups, 32 or 16]
    if format == "q8_0":
        planes["q"] = quants.view(torch.int8).clone()
    else:
        planes["q"] = torch.cat((quants & 15, quants >> 4), dim=-1)  # [n, groups, 32]
    return planes


def dequantize(format: str, planes: Planes) -> torch.Tensor:
    """A quantized format's planes (see :func:`gguf_planes`) as float32 ``[n, in]``, as
    gguf's reference computes them: q8_0 ``d * q``, q4_0 ``d * (q - 8)``, q4_1 ``d * q + m``
    (each exact but q4_1's one rounding); a K-quant's as
    :func:`prefixkv.kernels.kquants.dequantize`. A new tensor."""
    if format in kquants.K_FORMATS:
        return kquants.dequantize(format, planes)
    d = planes["d"].float()[..., None]  # [n, groups, 1]: widened exactly
    q = planes["q"].float()  # [n, groups, 32]
    if format == "q8_0":
        w = d * q
    elif format == "q4_0":
        w = d * (q - 8)
    else:
        w = d * q + planes["m"].float()[..., None]
    return w.reshape(w.shape[0], -1)


def exact_bf16(weight: torch.Tensor) -> torch.Tensor | None:
    """``weight`` (float32) as bf16 where every value is a bf16 value, so that widening it
    back gives the same bits; None where any value would round."""
    narrow = weight.detach().to(torch.bfloat16)
    return narrow if torch.equal(narrow.to(_F32), weight.detach()) else None


def unpack(packed: PackedWeight) -> torch.Tensor:
    """The reference dequantizer: ``packed``'s weight as a new float32 ``[out, in]``."""
    planes = _planes(packed)
    if packed.format in ("f32", "bf16"):
        return planes["w"].float()
    return dequantize(int_layout.BASE.get(packed.format, packed.format), planes)


def planes_of(packed: PackedWeight) -> Planes:
    """``packed``'s planes (as :func:`gguf_planes` gives them; an integer-dot format's are
    its base format's), new tensors."""
    return _planes(packed)


def concat(parts: Sequence[PackedWeight]) -> PackedWeight:
    """The weights ``parts`` joined along output columns (sibling projections of one input,
    joined as :mod:`prefixkv.engine.fused` joins them), in one format. ValueError for none,
    or parts of different formats or input features."""
    if not parts:
        raise ValueError("concat: no weights to join")
    first = parts[0]
    for part in parts:
        if (part.format, part.in_features) != (first.format, first.in_features):
            raise ValueError(f"concat: {part.format} x {part.in_features} features beside "
                             f"{first.format} x {first.in_features}")  # fmt: skip
    split = [_planes(part) for part in parts]
    planes = {name: torch.cat([p[name] for p in split]) for name in split[0]}
    return _pack(first.format, first.in_features, planes)


def _expect(weight: torch.Tensor, dtype: torch.dtype) -> None:
    """TypeError unless ``weight`` is a 2-dimensional ``dtype`` tensor."""
    if not isinstance(weight, torch.Tensor) or weight.dtype != dtype or weight.dim() != 2:
        what = f"{weight.dtype} {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else ""
        raise TypeError(f"weight: a 2-dimensional {dtype} tensor expected, not {what or weight}")


def _pack(format: str, in_features: int, planes: Planes) -> PackedWeight:
    """Lays ``planes`` (each ``[out, ...]``) out as ``format``'s column blocks."""
    base = int_layout.BASE.get(format)
    if base is not None:
        plain = _pack(base, in_features, planes)
        return PackedWeight(format, in_features, plain.out_features,
                            int_layout.reorder(base, plain.data))  # fmt: skip
    out = next(iter(planes.values())).shape[0]
    blocks = -(-out // BLOCK)
    if format in kquants.K_FORMATS:
        return PackedWeight(format, in_features, out, kquants.pack(format, planes))
    if format in ("f32", "bf16"):
        data = as_bytes(columns_last(planes["w"], blocks), blocks)  # [blocks, in, BLOCK]
        return PackedWeight(format, in_features, out, data)
    groups = in_features // GROUP
    parts = [as_bytes(columns_last(planes[name], blocks), blocks * groups)
             for name in ("d", "m") if name in planes]  # fmt: skip
    q = columns_last(planes["q"], blocks)  # [blocks, groups, 32, BLOCK]
    if format != "q8_0":  # byte c: column c low, column c + 32 high
        q = q[..., : BLOCK // 2] | (q[..., BLOCK // 2 :] << 4)
    parts.append(as_bytes(q, blocks * groups))
    data = torch.cat(parts, dim=1).view(blocks, -1)
    return PackedWeight(format, in_features, out, data)


def _planes(packed: PackedWeight) -> Planes:
    """The inverse of :func:`_pack`: ``packed``'s planes, each ``[out, ...]``, new tensors
    (an integer-dot format's are its base format's)."""
    base = int_layout.BASE.get(packed.format)
    if base is not None:
        data = int_layout.restore(base, packed.data)
        packed = PackedWeight(base, packed.in_features, packed.out_features, data)
    blocks, out, k = packed.data.shape[0], packed.out_features, packed.in_features
    if packed.format in kquants.K_FORMATS:
        return kquants.unpack(packed.format, packed.data, out, k)
    if packed.format in ("f32", "bf16"):
        dtype = torch.float32 if packed.format == "f32" else torch.bfloat16
        return {"w": columns_first(packed.data.view(dtype).view(blocks, k, BLOCK), out)}
    groups = k // GROUP
    rows = packed.data.view(blocks, groups, -1)
    names = ("d", "m")[: _HEADER[packed.format]]
    header = BLOCK * 2  # bytes of one fp16 vector of BLOCK
    planes = {
        name: columns_first(rows[..., i * header : (i + 1) * header].contiguous().view(_F16), out)
        for i, name in enumerate(names)
    }
    q = rows[..., len(names) * header :].reshape(blocks, groups, GROUP, -1)
    q = q.view(torch.int8) if packed.format == "q8_0" else torch.cat((q & 15, q >> 4), dim=-1)
    planes["q"] = columns_first(q, out)  # [out, groups, 32]
    return planes
