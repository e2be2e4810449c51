"""Deterministic KV data for cache tests: the KV of a position depends on its whole prefix,
as in a real model, so any block served for the wrong prefix shows up as a value mismatch."""

from __future__ import annotations

import torch

from prefixkv import KVLayout

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=3)


def prefix_codes(tokens: list[int]) -> list[int]:
    codes, acc = [], 17
    for token in tokens:
        acc = (acc * 1_000_003 + token + 1) % 999_983
        codes.append(acc)
    return codes


def kv_for(tokens: list[int], layout: KVLayout = LAYOUT) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(keys, values)]`` per layer, each ``[heads, len(tokens), dim]``."""
    code = torch.tensor(prefix_codes(tokens), dtype=torch.float64)  # [seq]
    heads = torch.arange(layout.num_kv_heads, dtype=torch.float64)[:, None, None]
    dims = torch.arange(layout.head_dim, dtype=torch.float64)[None, None, :]
    base = code[None, :, None] + 0.01 * heads + 0.001 * dims  # [heads, seq, dim]
    return [
        ((base + layer).to(layout.dtype), (base - layer - 0.5).to(layout.dtype))
        for layer in range(layout.num_layers)
    ]
