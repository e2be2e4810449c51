"""GGUF's K-quants (q4_k, q5_k, q6_k) for the native linear kernel: their planes, their
dequantization as gguf-py computes it, and their column-block layout
(``csrc/linear_kquants.h``).

A K-quant row is super-blocks of SUPER = 256 weights. Planes (one leading row per output
column, S super-blocks): ``d`` float16 ``[n, S]``; q4_k/q5_k also ``dmin`` float16 ``[n,
S]``, ``sc`` and ``m`` uint8 ``[n, S, 8]`` (6-bit, per sub-block of 32); q6_k ``sc`` int8
``[n, S, 16]`` (per sub-block of 16); ``q`` uint8 ``[n, S, 256]`` (0..15, 0..31 or 0..63).

Bytes per weight, the file's and the packed layout's (headers stay fp16 and uint8, never
fp32): q4_k 0.5625 -> 0.578 (+2.8%), q5_k 0.6875 -> 0.703 (+2.3%), q6_k 0.8203 -> 0.8203.
"""

from __future__ import annotations

import torch

from prefixkv.kernels.columns import (
    as_bytes,
    columns_first,
    columns_last,
    from_nibble_pairs,
    nibble_pairs,
)

SUPER = 256  # weights per super-block
K_FORMATS = ("q4_k", "q5_k", "q6_k")
GGUF_SUPER_BYTES = {"q4_k": 144, "q5_k": 176, "q6_k": 210}  # a file's bytes per super-block
# Bytes per super-block of one column block: csrc/linear_kquants.h
PACKED_SUPER_BYTES = {"q4_k": 9472, "q5_k": 11520, "q6_k": 13440}
_F16, _U8 = torch.float16, torch.uint8

Planes = dict[str, torch.Tensor]


def gguf_planes(format: str, rows: torch.Tensor) -> Planes:
    """GGUF rows (uint8 ``[n, S * GGUF_SUPER_BYTES[format]]``, a K format, the caller checked)
    as planes (module docstring). New tensors."""
    raw = rows.view(rows.shape[0], -1, GGUF_SUPER_BYTES[format])  # [n, S, bytes]
    n, supers = raw.shape[:2]
    if format == "q6_k":  # ql[128], qh[64], int8 scales[16], fp16 d
        low = _halves(raw[..., :128].reshape(n, supers, 2, 64))  # [n, S, 2, 2, 64]
        high = raw[..., 128:192].reshape(n, supers, 2, 1, 32) >> torch.tensor([0, 2, 4, 6],
                                                                             dtype=_U8)[:, None]  # fmt: skip
        q = low.reshape(n, supers, SUPER) | ((high & 3).reshape(n, supers, SUPER) << 4)
        return {"d": _f16(raw[..., 208:210]), "sc": raw[..., 192:208].view(torch.int8).clone(),
                "q": q}  # fmt: skip
    sc, m = _scale_min(raw[..., 4:16])
    quants = raw[..., 16 + 32 * (format == "q5_k") :].reshape(n, supers, 4, 32)
    q = _halves(quants).reshape(n, supers, SUPER)  # sub-block 2i: low nibbles of 32 i..
    if format == "q5_k":  # bit i of qh[0..32) is sub-block i's 5th bit
        bits = raw[..., 16:48].reshape(n, supers, 1, 32) >> torch.arange(8, dtype=_U8)[:, None]
        q = q | ((bits & 1).reshape(n, supers, SUPER) << 4)
    return {"d": _f16(raw[..., 0:2]), "dmin": _f16(raw[..., 2:4]), "sc": sc, "m": m, "q": q}


def dequantize(format: str, planes: Planes) -> torch.Tensor:
    """A K format's planes as float32 ``[n, S * 256]``, in gguf-py's order: q4_k and q5_k
    ``(d * sc) * q - (dmin * m)``, q6_k ``(d * sc) * (q - 32)`` (every product exact, one
    rounding in q4_k's and q5_k's subtraction). A new tensor."""
    d, q = planes["d"].float(), planes["q"].float()
    n, supers = q.shape[:2]
    if format == "q6_k":
        scale = (d[..., None] * planes["sc"].float())[..., None]  # [n, S, 16, 1]
        w = scale * (q.view(n, supers, 16, 16) - 32)
    else:
        scale = (d[..., None] * planes["sc"].float())[..., None]  # [n, S, 8, 1]
        shift = (planes["dmin"].float()[..., None] * planes["m"].float())[..., None]
        w = scale * q.view(n, supers, 8, 32) - shift
    return w.reshape(n, -1)


def pack(format: str, planes: Planes) -> torch.Tensor:
    """Planes as column blocks, uint8 ``[blocks, S * PACKED_SUPER_BYTES[format]]``."""
    out, supers = planes["q"].shape[:2]
    blocks = -(-out // 64)
    rows = blocks * supers

    def part(name: str) -> torch.Tensor:  # [blocks * S, bytes]
        return as_bytes(columns_last(planes[name], blocks), rows)

    q = columns_last(planes["q"], blocks)  # [blocks, S, 256, 64]
    low = as_bytes(nibble_pairs(q), rows)
    if format == "q6_k":  # byte b: the high 2 bits of columns b, b + 16, b + 32, b + 48
        high = (q >> 4).view(blocks, supers, SUPER, 4, 16) << _shifts(0, 2, 4, 6)[:, None]
        parts = [part("d"), part("sc"), as_bytes(high.sum(3, dtype=_U8), rows), low]
    else:
        parts = [part("d"), part("dmin"), part("sc"), part("m")]
        if format == "q5_k":  # k pairs: byte b, bit j + 4 t: column 16 j + b of step 2 p + t
            fifth = ((q >> 4) & 1).view(blocks, supers, SUPER // 2, 2, 4, 16)
            bits = fifth << _shifts(*range(8)).view(2, 4, 1)
            parts.append(as_bytes(bits.sum((3, 4), dtype=_U8), rows))
        parts.append(low)
    return torch.cat(parts, dim=1).view(blocks, -1)


def unpack(format: str, data: torch.Tensor, out: int, in_features: int) -> Planes:
    """The inverse of :func:`pack`: ``data``'s planes, each ``[out, ...]``, new tensors."""
    blocks, supers = data.shape[0], in_features // SUPER
    rows = data.view(blocks, supers, PACKED_SUPER_BYTES[format])

    def take(start: int, stop: int, dtype: torch.dtype, *shape: int) -> torch.Tensor:
        """Bytes [start, stop) of each super-block: a plane [out, S, *shape]."""
        plane = rows[..., start:stop].contiguous().view(dtype).view(blocks, supers, *shape, 64)
        return columns_first(plane, out)

    def high(start: int, width: int) -> torch.Tensor:
        """A k step's ``width`` bytes of high bits at ``start`` of each super-block:
        [blocks, S, 256, width]."""
        return rows[..., start : start + SUPER * width].reshape(blocks, supers, SUPER, width)

    low = from_nibble_pairs(rows[..., -SUPER * 32 :].reshape(blocks, supers, SUPER, 32))
    if format == "q6_k":
        planes = {"d": take(0, 128, _F16), "sc": take(128, 1152, torch.int8, 16)}
        pairs = high(1152, 16)[..., None, :] >> _shifts(0, 2, 4, 6)[:, None]  # [.., 4, 16]
        low = low | ((pairs & 3).flatten(-2) << 4)  # column 16 j + b
    else:
        planes = {"d": take(0, 128, _F16), "dmin": take(128, 256, _F16),
                  "sc": take(256, 768, _U8, 8), "m": take(768, 1280, _U8, 8)}  # fmt: skip
        if format == "q5_k":  # [blocks, S, 128, 16] -> [blocks, S, 128, 2, 4, 16]
            pairs = high(1280, 8).reshape(blocks, supers, SUPER // 2, 1, 1, 16)
            fifth = (pairs >> _shifts(*range(8)).view(2, 4, 1)) & 1
            low = low | (fifth.reshape(blocks, supers, SUPER, 64) << 4)
    planes["q"] = columns_first(low, out)  # [out, S, 256]
    return planes


def _scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q4_k's and q5_k's 12 bytes of 6-bit scales and mins (``[n, S, 12]``) as two uint8
    ``[n, S, 8]`` (gguf-py's ``Q4_K.get_scale_min``)."""
    d, m, both = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = torch.cat((d & 63, (both & 15) | ((d >> 2) & 48)), dim=-1)
    mins = torch.cat((m & 63, (both >> 4) | ((m >> 2) & 48)), dim=-1)
    return sc, mins


def _halves(quants: torch.Tensor) -> torch.Tensor:
    """Bytes ``[..., c]`` as their low nibbles, then their high ones: ``[..., 2, c]``."""
    return torch.stack((quants & 15, quants >> 4), dim=-2)


def _f16(pair: torch.Tensor) -> torch.Tensor:
    """Bytes ``[n, S, 2]`` as float16 ``[n, S]``."""
    return pair.contiguous().view(_F16)[..., 0]


def _shifts(*bits: int) -> torch.Tensor:
    """The shift counts ``bits`` as a uint8 vector."""
    return torch.tensor(bits, dtype=_U8)
