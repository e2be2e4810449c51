"""The integer-dot formats' layout (``csrc/linear_int8.h``): the column blocks of ``q8_0``,
``q4_0`` and ``q4_1`` with each group's quants reordered so that one 64-byte vector holds 16
columns x 4 consecutive input features (the order VNNI's ``vpdpbusd`` multiplies in), and
q8_0's stored unsigned (``q + 128``). The fp16 headers stay where they are, so a block has
the same bytes as its base format's; only the order within a group's quants differs.

Both directions are pure permutations of bytes (and q8_0's offset), so
``restore(base, reorder(base, data))`` is ``data``. The K-quants' integer-dot layouts (same
bytes per super-block, quants reordered alike) are :mod:`prefixkv.kernels.kint_layout`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prefixkv.kernels import kint_layout, kquants
from prefixkv.kernels.columns import BLOCK, from_nibble_pairs, nibble_pairs
from prefixkv.kernels.kquants import Planes

INT_DOT = {"q8_0": "q8_0.q8", "q4_0": "q4_0.q8", "q4_1": "q4_1.q8",
           "q4_k": "q4_k.q8", "q5_k": "q5_k.q8", "q6_k": "q6_k.q8"}  # fmt: skip
"""Each base format's integer-dot format (``--activations q8``)."""
BASE = {name: base for base, name in INT_DOT.items()}
GROUP = 32
_HEADER_BYTES = {"q8_0": BLOCK * 2, "q4_0": BLOCK * 2, "q4_1": BLOCK * 4}


def _split(base: str, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` (uint8 ``[blocks, groups * group bytes]``) as headers ``[blocks, groups,
    header]`` and quants ``[blocks, groups, rest]`` (views)."""
    header = _HEADER_BYTES[base]
    group_bytes = header + (GROUP * BLOCK if base == "q8_0" else GROUP * BLOCK // 2)
    groups = data.view(data.shape[0], -1, group_bytes)
    return groups[..., :header], groups[..., header:]


def reorder(base: str, data: torch.Tensor) -> torch.Tensor:
    """A ``base`` format's packed ``data`` in its integer-dot layout: a new tensor of the
    same shape. KeyError for a format without one."""
    if base in kquants.K_FORMATS:
        return kint_layout.pack(base, _k_planes(base, data, kquants.unpack))
    header, quants = _split(base, data)
    blocks, groups = quants.shape[:2]
    if base == "q8_0":
        signed = quants.reshape(blocks, groups, GROUP, BLOCK).view(torch.int8)
        unsigned = (signed.to(torch.int16) + 128).to(torch.uint8)  # [b, g, k, c]
        ordered = unsigned.view(blocks, groups, GROUP // 4, 4, BLOCK).transpose(-1, -2)
    else:
        values = from_nibble_pairs(quants.reshape(blocks, groups, GROUP, BLOCK // 2))
        quads = values.view(blocks, groups, GROUP // 8, 2, 4, BLOCK)  # [p, half, i, c]
        ordered = (quads[:, :, :, 0] | (quads[:, :, :, 1] << 4)).transpose(-1, -2)
    ordered = ordered.reshape(blocks, groups, -1)
    return torch.cat((header, ordered), dim=-1).reshape(data.shape).contiguous()


def restore(base: str, data: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`reorder`: integer-dot ``data`` in ``base``'s layout (new)."""
    if base in kquants.K_FORMATS:
        return kquants.pack(base, _k_planes(base, data, kint_layout.unpack))
    header, quants = _split(base, data)
    blocks, groups = quants.shape[:2]
    if base == "q8_0":
        ordered = quants.reshape(blocks, groups, GROUP // 4, BLOCK, 4).transpose(-1, -2)
        signed = (ordered.to(torch.int16) - 128).to(torch.int8)  # [b, g, t, i, c]
        plain = signed.reshape(blocks, groups, -1).view(torch.uint8)
    else:
        ordered = quants.reshape(blocks, groups, GROUP // 8, BLOCK, 4).transpose(-1, -2)
        values = torch.stack((ordered & 15, ordered >> 4), dim=3)  # [p, half, i, c]
        plain = nibble_pairs(values.reshape(blocks, groups, GROUP, BLOCK)).reshape(
            blocks, groups, -1
        )
    return torch.cat((header, plain), dim=-1).reshape(data.shape).contiguous()


def _k_planes(base: str, data: torch.Tensor,
              unpack: Callable[[str, torch.Tensor, int, int], Planes]) -> Planes:  # fmt: skip
    """Every column's planes (padding columns too) of a K format's ``data`` as ``unpack``
    (one layout's) reads them."""
    blocks = data.shape[0]
    supers = data.shape[1] // kquants.PACKED_SUPER_BYTES[base]
    return unpack(base, data, blocks * BLOCK, supers * kquants.SUPER)
