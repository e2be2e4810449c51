"""KVLayout: the shape of one model's attention keys/values, and checks against it;
KVGeometry: a layout and the block size it is cached in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

KVPairs = Sequence[tuple[torch.Tensor, torch.Tensor]]
"""One ``(keys, values)`` pair per layer, each ``[num_kv_heads, seq_len, head_dim]``."""


@dataclass(frozen=True)
class KVLayout:
    """Per-layer KV geometry of a model (grouped-query attention: ``num_kv_heads`` heads)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KVLayout.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.dtype, torch.dtype):
            raise TypeError(f"KVLayout.dtype must be a torch.dtype, got {self.dtype!r}")

    @property
    def bytes_per_token(self) -> int:
        """Keys and values of one token across all layers."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def block_bytes(self, block_size: int) -> int:
        return self.bytes_per_token * block_size

    def check_kv(
        self, kv: Any, seq_len: int, device: torch.device
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Validate ``kv`` for ``seq_len`` tokens; return it as 3-D ``[heads, seq, dim]`` pairs.

        Accepts a leading batch dimension of 1. Raises TypeError/ValueError naming the layer,
        the tensor and what is wrong. Never mutates or copies the tensors.
        """
        if isinstance(kv, torch.Tensor) or not isinstance(kv, Sequence):
            raise TypeError(
                f"kv must be a sequence of (keys, values) pairs, got {type(kv).__name__}"
            )
        if len(kv) != self.num_layers:
            raise ValueError(f"kv has {len(kv)} layers, the layout has {self.num_layers}")
        expected = (self.num_kv_heads, seq_len, self.head_dim)
        out = []
        for layer, pair in enumerate(kv):
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise TypeError(f"kv[{layer}] must be a (keys, values) pair")
            checked = []
            for name, tensor in zip(("keys", "values"), pair, strict=False):
                where = f"kv[{layer}] {name}"
                if not isinstance(tensor, torch.Tensor):
                    raise TypeError(f"{where} must be a torch.Tensor, got {type(tensor).__name__}")
                if tensor.dim() == 4 and tensor.shape[0] == 1:
                    tensor = tensor[0]
                if tuple(tensor.shape) != expected:
                    raise ValueError(
                        f"{where} has shape {tuple(tensor.shape)}, expected {expected}"
                        " ([num_kv_heads, seq_len, head_dim], optionally with a batch dim of 1)"
                    )
                if tensor.dtype != self.dtype:
                    raise TypeError(
                        f"{where} has dtype {tensor.dtype}, the cache holds {self.dtype}"
                    )
                if tensor.device != device:
                    raise ValueError(f"{where} is on {tensor.device}, the cache is on {device}")
                checked.append(tensor)
            out.append((checked[0], checked[1]))
        return out


@dataclass(frozen=True)
class KVGeometry:
    """The shape of the KV and the unit it is cached in: the one record of the block size.
    The composition root (:mod:`prefixkv.engine.build`) decides it; the pool, the caches and
    the runners read it from here."""

    layout: KVLayout
    block_size: int

    def __post_init__(self) -> None:
        size = self.block_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"block_size must be a positive integer, got {size!r}")

    @property
    def block_bytes(self) -> int:
        """Keys and values of one block across all layers."""
        return self.layout.block_bytes(self.block_size)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks that hold ``num_tokens`` tokens (the last one possibly partial)."""
        return -(-num_tokens // self.block_size)


class GeometryOwner:
    """A mixin for what holds KV of one geometry (the pool, the caches): ``layout`` and
    ``block_size`` are read from ``geometry``, never kept beside it."""

    geometry: KVGeometry

    @property
    def layout(self) -> KVLayout:
        return self.geometry.layout

    @property
    def block_size(self) -> int:
        return self.geometry.block_size
