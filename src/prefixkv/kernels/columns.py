"""Planes to column blocks and back: the one reshaping every packed format
(:mod:`prefixkv.kernels.formats`, :mod:`prefixkv.kernels.kquants`) lays its planes out with.

A plane has one leading row per output column (``[out, *rest]``); in a column block the
columns come last (``[blocks, *rest, BLOCK]``), zero past ``out``.
"""

from __future__ import annotations

import torch

BLOCK = 64  # output columns per block: prefixkv_linear_block()


def columns_last(plane: torch.Tensor, blocks: int) -> torch.Tensor:
    """``plane`` ``[out, *rest]`` as a new ``[blocks, *rest, BLOCK]``, zero past ``out``."""
    out = plane.shape[0]
    padded = plane.new_zeros(blocks * BLOCK, *plane.shape[1:])
    padded[:out] = plane
    return padded.view(blocks, BLOCK, *plane.shape[1:]).movedim(1, -1).contiguous()


def columns_first(plane: torch.Tensor, out: int) -> torch.Tensor:
    """The inverse of :func:`columns_last`: ``[blocks, *rest, BLOCK]`` as a new ``[out,
    *rest]``."""
    blocks = plane.shape[0]
    return plane.movedim(-1, 1).reshape(blocks * BLOCK, *plane.shape[1:-1])[:out].clone()


def as_bytes(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor``'s bytes (made contiguous) as uint8 ``[rows, -1]``."""
    return tensor.contiguous().view(torch.uint8).view(rows, -1)


def nibble_pairs(q: torch.Tensor) -> torch.Tensor:
    """4-bit values ``[..., BLOCK]`` (uint8) as ``[..., BLOCK / 2]`` bytes: byte c holds
    column c in its low nibble, column c + 32 in its high one."""
    half = BLOCK // 2
    return (q[..., :half] & 15) | ((q[..., half:] & 15) << 4)


def from_nibble_pairs(pairs: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`nibble_pairs`: ``[..., BLOCK]`` uint8 values 0..15."""
    return torch.cat((pairs & 15, pairs >> 4), dim=-1)
