"""The K-quants' integer-dot layouts (``q4_k.q8``, ``q5_k.q8``, ``q6_k.q8``;
``csrc/linear_int8_k.h``): each super-block of 256 input features keeps its scales as the
float kernel's layout has them (:mod:`prefixkv.kernels.kquants`), then holds its 8 groups of
32 features, each group's quants in the order VNNI's ``vpdpbusd`` multiplies them, as
q4_0.q8 does (:mod:`prefixkv.kernels.int_layout`), their high bits beside them:

- ``lo`` uint8 ``[4][64][4]``: byte ``(p, c, i)`` holds column ``c``'s low 4 bits at
  ``k = 8 p + i`` (low nibble) and at ``k = 8 p + 4 + i`` (high nibble);
- q5_k ``hb`` uint8 ``[64][4]`` before ``lo``: bit ``2 p + h`` of byte ``(c, i)`` is the
  5th bit at ``k = 8 p + 4 h + i``;
- q6_k ``hb`` uint8 ``[2][64][4]`` before ``lo``: bits ``2 t, 2 t + 1`` of byte ``(s, c,
  i)`` are the top 2 bits at ``k = 8 p + 4 h + i`` with ``p = 2 s + t // 2``, ``h = t % 2``
  (so ``s`` is q6_k's 16-feature sub-block within the group).

A super-block has the same byte count as the float layout's (9472, 11520, 13440), so a
weight streams the same bytes either way. :func:`pack` and :func:`unpack` go through the
planes, so ``unpack(pack(planes))`` is ``planes``.
"""

from __future__ import annotations

import torch

from prefixkv.kernels.columns import BLOCK, as_bytes, columns_first, columns_last
from prefixkv.kernels.kquants import PACKED_SUPER_BYTES, SUPER, Planes

GROUPS = SUPER // 32  # groups of 32 features per super-block
_U8, _F16, _I8 = torch.uint8, torch.float16, torch.int8
# header planes in order: name, dtype, bytes per column per super-block
_HEADERS = {
    "q4_k": (("d", _F16, 2), ("dmin", _F16, 2), ("sc", _U8, 8), ("m", _U8, 8)),
    "q5_k": (("d", _F16, 2), ("dmin", _F16, 2), ("sc", _U8, 8), ("m", _U8, 8)),
    "q6_k": (("d", _F16, 2), ("sc", _I8, 16)),
}
HIGH_BYTES = {"q4_k": 0, "q5_k": BLOCK * 4, "q6_k": 2 * BLOCK * 4}
"""Bytes of a group's high bits (before its 1024 of low ones)."""
HEADER_BYTES = {name: sum(size for _, _, size in parts) * BLOCK for name, parts in _HEADERS.items()}
"""Bytes of a super-block's scales (before its groups): 1280, 1280, 1152."""


def _shifts(*bits: int) -> torch.Tensor:
    return torch.tensor(bits, dtype=_U8)


def pack(format: str, planes: Planes) -> torch.Tensor:
    """A K format's planes (:func:`prefixkv.kernels.kquants.gguf_planes`) in its
    integer-dot layout: uint8 ``[blocks, S * PACKED_SUPER_BYTES[format]]``, new."""
    out, supers = planes["q"].shape[:2]
    blocks = -(-out // BLOCK)
    rows = blocks * supers
    header = [as_bytes(columns_last(planes[name], blocks), rows) for name, _, _ in _HEADERS[format]]
    q = columns_last(planes["q"], blocks).view(blocks, supers, GROUPS, 4, 2, 4, BLOCK)
    low = q & 15  # [b, S, g, p, h, i, c]
    lo = (low[..., 0, :, :] | (low[..., 1, :, :] << 4)).transpose(-1, -2)  # [b, S, g, p, c, i]
    parts = [lo.reshape(blocks, supers, GROUPS, -1)]
    if format == "q5_k":
        fifth = ((q >> 4) & 1) << _shifts(*range(8)).view(4, 2, 1, 1)
        hb = fifth.sum((3, 4), dtype=_U8).transpose(-1, -2)  # [b, S, g, c, i]
        parts.insert(0, hb.reshape(blocks, supers, GROUPS, -1))
    elif format == "q6_k":
        top = ((q >> 4) & 3).view(blocks, supers, GROUPS, 2, 2, 2, 4, BLOCK)  # [s, p%2, h]
        bits = top << _shifts(0, 2, 4, 6).view(2, 2, 1, 1)
        hb = bits.sum((4, 5), dtype=_U8).transpose(-1, -2)  # [b, S, g, s, c, i]
        parts.insert(0, hb.reshape(blocks, supers, GROUPS, -1))
    groups = torch.cat(parts, dim=-1).reshape(rows, -1)
    return torch.cat((*header, groups), dim=1).view(blocks, -1)


def unpack(format: str, data: torch.Tensor, out: int, in_features: int) -> Planes:
    """The inverse of :func:`pack`: ``data``'s planes, each ``[out, ...]``, new tensors."""
    blocks, supers = data.shape[0], in_features // SUPER
    rows = data.view(blocks, supers, PACKED_SUPER_BYTES[format])
    planes: Planes = {}
    start = 0
    for name, dtype, size in _HEADERS[format]:
        raw = rows[..., start : start + size * BLOCK].contiguous().view(dtype)
        shape = (blocks, supers, BLOCK) if size == 2 else (blocks, supers, size, BLOCK)
        planes[name] = columns_first(raw.view(shape), out)
        start += size * BLOCK
    high = HIGH_BYTES[format]
    groups = rows[..., start:].reshape(blocks, supers, GROUPS, -1)
    lo = groups[..., high:].reshape(blocks, supers, GROUPS, 4, BLOCK, 4).transpose(-1, -2)
    q = torch.stack((lo & 15, lo >> 4), dim=4)  # [b, S, g, p, h, i, c]
    if format == "q5_k":
        hb = groups[..., :high].reshape(blocks, supers, GROUPS, 1, 1, BLOCK, 4).transpose(-1, -2)
        q = q | (((hb >> _shifts(*range(8)).view(4, 2, 1, 1)) & 1) << 4)
    elif format == "q6_k":
        hb = groups[..., :high].reshape(blocks, supers, GROUPS, 2, 1, 1, BLOCK, 4)
        pairs = hb.transpose(-1, -2) >> _shifts(0, 2, 4, 6).view(2, 2, 1, 1)  # [s, p%2, h]
        q = q | ((pairs & 3).reshape(q.shape) << 4)
    planes["q"] = columns_first(q.reshape(blocks, supers, SUPER, BLOCK), out)
    return planes
