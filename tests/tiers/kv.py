"""A tiny layout whose KV is a pure function of the prefix, so any restored block can be
checked against what the prompt's own KV must be."""

from __future__ import annotations

import torch

from prefixkv.cache.layout import KVLayout
from prefixkv.cache.paged import PrefixKVCache
from prefixkv.tiers.tiered import TieredCache

LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=4)
BLOCK = 4
BLOCK_BYTES = LAYOUT.block_bytes(BLOCK)
FINGERPRINT = bytes(range(16))


def kv_of(tokens: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """KV of ``tokens``: token t's entries depend on every id up to t (like attention's)."""
    prefix = torch.tensor(tokens, dtype=torch.float64).cumsum(0)
    position = torch.arange(len(tokens), dtype=torch.float64)
    base = (prefix * 0.37 + position * 0.011).remainder(97.0).float()  # [tokens]
    out = []
    for layer in range(LAYOUT.num_layers):
        grid = base[None, :, None] + torch.arange(8, dtype=torch.float32).view(2, 1, 4)
        out.append((grid + layer, -grid - layer))  # [heads, tokens, dim] each
    return out


def kv_tensor(tokens: list[int]) -> torch.Tensor:
    """``kv_of`` as ``[layers, 2, heads, tokens, dim]`` (what a Lease's ``copy_to`` fills)."""
    return torch.stack([torch.stack(pair) for pair in kv_of(tokens)])


def hot_cache(blocks: int) -> PrefixKVCache:
    return PrefixKVCache(LAYOUT, BLOCK, blocks * BLOCK_BYTES)


def served(cache: TieredCache, tokens: list[int]) -> int:
    """Tokens a lookup of ``tokens`` serves, each checked to be exactly the prompt's KV."""
    with cache.lookup(tokens) as lease:
        if lease.num_tokens:
            want = kv_tensor(tokens)
            for layer, (keys, values) in enumerate(lease.kv):
                assert keys.equal(want[layer, 0, :, : lease.num_tokens])
                assert values.equal(want[layer, 1, :, : lease.num_tokens])
        return lease.num_tokens
