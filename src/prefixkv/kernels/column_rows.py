"""Rows of a packed weight read out of its column blocks: a tied head's weight serving as the
token embedding's table, so that the model holds the table once.

A packed weight's output column ``j`` is row ``j`` of the ``[out, in]`` weight, and every
layout keeps a column's values at fixed places of block ``j // BLOCK`` (``csrc/linear.c``,
``csrc/linear_legacy.h``, ``csrc/linear_kquants.h``): a 16-bit or 8-bit lane ``j % BLOCK``
of each header and 8-bit quant row, a nibble of each 4-bit row (byte ``j % 32``, high half
for ``j >= 32``), two bits of each q6_k high row and one bit of each q5_k high row (byte
``j % 16``); in a K-quant's integer-dot layout, 4 bytes of each group's rows of 256 bytes. :func:`rows_of` gathers just those bytes for the rows asked for, rebuilds their
planes (:mod:`prefixkv.kernels.formats`) and de-quantizes them as
:func:`prefixkv.kernels.formats.unpack` does: the same float32 bits, a few rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from prefixkv.kernels import formats, kint_layout, kquants
from prefixkv.kernels.formats import BLOCK, GROUP, PackedWeight, Planes
from prefixkv.kernels.int_layout import BASE
from prefixkv.kernels.kint_layout import GROUPS

_F16, _U8, _I8 = torch.float16, torch.uint8, torch.int8
_HALVES = BLOCK * 2  # bytes of one fp16 vector of BLOCK columns


def rows_of(packed: PackedWeight, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (int64 ``[n]``, each in ``[0, out_features)``, the caller checked) of
    ``packed``'s weight as a new float32 ``[n, in_features]``: bit for bit those rows of
    :func:`~prefixkv.kernels.formats.unpack`. Mutates nothing."""
    block, lane = ids // BLOCK, ids % BLOCK
    planes = _GATHER[packed.format](packed, block, lane)
    if packed.format in ("f32", "bf16"):
        return planes["w"].float()
    return formats.dequantize(BASE.get(packed.format, packed.format), planes)


def _spans(packed: PackedWeight, steps: int) -> np.ndarray:
    """``packed.data`` as a uint8 numpy view ``[blocks, in / steps, bytes]``: one span of
    ``steps`` input features per row (a group, a super-block, one step). The gathers index
    it in numpy: one thread, where torch's advanced indexing went parallel on a few ids and
    waited milliseconds for a busy core (as :class:`prefixkv.engine.embedding.RowEmbedding`
    found for its own)."""
    blocks = packed.data.shape[0]
    return packed.data.numpy().reshape(blocks, packed.in_features // steps, -1)


def _lanes(spans: np.ndarray, start: int, stop: int, dtype: torch.dtype,
           block: torch.Tensor, lane: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Bytes ``[start, stop)`` of each span as rows of BLOCK ``dtype`` lanes; lane ``lane``
    of each row of block ``block``: ``[n, spans, rows]`` (rows squeezed where one). Views
    until the gather, which copies only the lanes picked."""
    blocks, count = spans.shape[:2]
    size = torch.empty(0, dtype=dtype).element_size()
    part = spans[..., start:stop].reshape(blocks, count, -1, BLOCK, size)
    picked = np.ascontiguousarray(part[block.numpy(), :, :, lane.numpy(), :])
    values = torch.from_numpy(picked).view(dtype)[..., 0]  # [n, spans, rows]
    return values[..., 0] if values.shape[-1] == 1 else values


def _nibbles(spans: np.ndarray, start: int, steps: int, block: torch.Tensor,
             lane: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The 4-bit values of ``steps`` rows of BLOCK / 2 bytes at ``start`` of each span:
    ``[n, spans, steps]`` uint8 0..15 (column c: byte c % 32, high half for c >= 32)."""
    half = BLOCK // 2
    bytes_ = _pairs(spans, start, steps, half, block, lane % half)
    return (bytes_ >> (4 * (lane // half)).to(_U8).view(-1, 1, 1)) & 15


def _pairs(spans: np.ndarray, start: int, steps: int, width: int, block: torch.Tensor,
           byte: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Byte ``byte`` of ``steps`` rows of ``width`` bytes at ``start`` of each span of block
    ``block``: ``[n, spans, steps]`` uint8."""
    blocks, count = spans.shape[:2]
    rows = spans[..., start : start + steps * width].reshape(blocks, count, steps, width)
    return torch.from_numpy(np.ascontiguousarray(rows[block.numpy(), :, :, byte.numpy()]))


def _plain(packed: PackedWeight, block: torch.Tensor, lane: torch.Tensor) -> Planes:
    dtype = torch.float32 if packed.format == "f32" else torch.bfloat16
    size = 4 if packed.format == "f32" else 2
    return {"w": _lanes(_spans(packed, 1), 0, BLOCK * size, dtype, block, lane)}


def _headers(spans: np.ndarray, base: str, block: torch.Tensor, lane: torch.Tensor) -> Planes:
    """The fp16 ``d`` (and q4_1's ``m``) of q8_0, q4_0, q4_1 and their integer-dot
    layouts' groups: ``[n, groups]`` each."""
    names = ("d", "m") if base == "q4_1" else ("d",)
    return {
        name: _lanes(spans, i * _HALVES, (i + 1) * _HALVES, _F16, block, lane)
        for i, name in enumerate(names)
    }


def _legacy(packed: PackedWeight, block: torch.Tensor, lane: torch.Tensor) -> Planes:
    spans = _spans(packed, GROUP)
    planes = _headers(spans, packed.format, block, lane)
    start = len(planes) * _HALVES
    if packed.format == "q8_0":
        planes["q"] = _lanes(spans, start, spans.shape[2], _I8, block, lane)
    else:
        planes["q"] = _nibbles(spans, start, GROUP, block, lane)
    return planes  # q: [n, groups, 32]


def _int_dot(packed: PackedWeight, block: torch.Tensor, lane: torch.Tensor) -> Planes:
    """An integer-dot format's planes (:mod:`prefixkv.kernels.int_layout`): column c's
    quants are 4 bytes at c * 4 of each of the group's 8 (q8_0: k = 4 t + i, stored q + 128)
    or 4 (4-bit: low nibble k = 8 p + i, high k = 8 p + 4 + i) rows of BLOCK * 4 bytes."""
    base = BASE[packed.format]
    spans = _spans(packed, GROUP)
    planes = _headers(spans, base, block, lane)
    start = len(planes) * _HALVES
    blocks, count = spans.shape[:2]
    rows = spans[..., start:].reshape(blocks, count, -1, BLOCK, 4)  # [b, g, t or p, c, i]
    picked = torch.from_numpy(np.ascontiguousarray(rows[block.numpy(), :, :, lane.numpy()]))
    if base == "q8_0":
        planes["q"] = (picked.to(torch.int16) - 128).to(_I8).flatten(-2)  # [n, groups, 32]
    else:
        planes["q"] = torch.stack((picked & 15, picked >> 4), dim=-2).flatten(-3)
    return planes


def _k_int_dot(packed: PackedWeight, block: torch.Tensor, lane: torch.Tensor) -> Planes:
    """A K-quant's integer-dot layout (:mod:`prefixkv.kernels.kint_layout`): the base
    format's headers, then per group column c's 16 bytes of lo (``(p, c, i)``) and its 4
    (q5_k) or 8 (q6_k) bytes of hb."""
    base = BASE[packed.format]
    spans = _spans(packed, kquants.SUPER)
    planes = _k_headers(spans, base, block, lane)
    n, count, high = len(block), spans.shape[1], kint_layout.HIGH_BYTES[base]
    region = spans[..., kint_layout.HEADER_BYTES[base] :].reshape(*spans.shape[:2], GROUPS, -1)
    b, c = block.numpy(), lane.numpy()
    lo = region[..., high:].reshape(*region.shape[:3], 4, BLOCK, 4)[b, :, :, :, c]
    q = np.stack((lo & 15, lo >> 4), axis=-2)  # [n, S, group, p, h, i]
    if base == "q5_k":  # bit 2 p + h
        hb = region[..., :high].reshape(*region.shape[:3], BLOCK, 4)[b, :, :, c]
        q |= ((hb[:, :, :, None, None] >> _FIFTH) & 1) << 4
    elif base == "q6_k":  # byte row s = p // 2, bits 4 (p % 2) + 2 h
        hb = region[..., :high].reshape(*region.shape[:3], 2, BLOCK, 4)[b, :, :, :, c]
        top = (hb[:, :, :, :, None, None] >> _TOP) & 3  # [n, S, group, s, p % 2, h, i]
        q |= top.reshape(q.shape) << 4
    planes["q"] = torch.from_numpy(q.reshape(n, count, kquants.SUPER))
    return planes


_FIFTH = np.arange(8, dtype=np.uint8).reshape(4, 2, 1)
_TOP = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(2, 2, 1)


def _k_headers(spans: np.ndarray, base: str, block: torch.Tensor, lane: torch.Tensor) -> Planes:
    """A K-quant's scales, at the same places in both its layouts: ``[n, S]`` or ``[n, S,
    sub-blocks]`` each."""
    if base == "q6_k":
        return {"d": _lanes(spans, 0, _HALVES, _F16, block, lane),
                "sc": _lanes(spans, _HALVES, 1152, _I8, block, lane)}  # fmt: skip
    return {"d": _lanes(spans, 0, _HALVES, _F16, block, lane),
            "dmin": _lanes(spans, _HALVES, 2 * _HALVES, _F16, block, lane),
            "sc": _lanes(spans, 256, 768, _U8, block, lane),
            "m": _lanes(spans, 768, 1280, _U8, block, lane)}  # fmt: skip


def _q6_k(packed: PackedWeight, block: torch.Tensor, lane: torch.Tensor) -> Planes:
    spans = _spans(packed, kquants.SUPER)
    low = _nibbles(spans, 5248, kquants.SUPER, block, lane)
    high = _pairs(spans, 1152, kquants.SUPER, 16, block, lane % 16)
    high = (high >> (2 * (lane // 16)).to(_U8).view(-1, 1, 1)) & 3
    return {**_k_headers(spans, "q6_k", block, lane), "q": low | (high << 4)}


def _q4_k(packed: PackedWeight, block: torch.Tensor, lane: torch.Tensor) -> Planes:
    """q4_k's and q5_k's planes (q5_k's fifth bits: byte lane % 16 of row k // 2, bit
    lane // 16 for an even k, 4 more for an odd one)."""
    spans = _spans(packed, kquants.SUPER)
    planes = _k_headers(spans, "q4_k", block, lane)
    if packed.format == "q4_k":
        planes["q"] = _nibbles(spans, 1280, kquants.SUPER, block, lane)
        return planes
    pairs = _pairs(spans, 1280, kquants.SUPER // 2, 16, block, lane % 16)  # [n, S, 128]
    shift = (lane // 16).to(_U8).view(-1, 1, 1)
    fifth = torch.stack(((pairs >> shift) & 1, (pairs >> (shift + 4)) & 1), dim=-1)
    low = _nibbles(spans, 3328, kquants.SUPER, block, lane)
    planes["q"] = low | (fifth.flatten(-2) << 4)
    return planes


_GATHER: dict[str, Callable[[PackedWeight, torch.Tensor, torch.Tensor], Planes]] = {
    "f32": _plain, "bf16": _plain, "q8_0": _legacy, "q4_0": _legacy, "q4_1": _legacy,
    "q4_k": _q4_k, "q5_k": _q4_k, "q6_k": _q6_k,
    "q8_0.q8": _int_dot, "q4_0.q8": _int_dot, "q4_1.q8": _int_dot,
    "q4_k.q8": _k_int_dot, "q5_k.q8": _k_int_dot, "q6_k.q8": _k_int_dot,
}  # fmt: skip
