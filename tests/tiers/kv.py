"""A tiny layout whose KV is a pure function of the prefix, so any restored block can be
checked against what the prompt's own KV must be."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
    """``kv_of`` as ``[layers, 2, heads, tokens, dim]`` (the layout of a table's blocks)."""
    return torch.stack([torch.stack(pair) for pair in kv_of(tokens)])


def hot_cache(blocks: int) -> PrefixKVCache:
    return PrefixKVCache(LAYOUT, BLOCK, blocks * BLOCK_BYTES)


@contextmanager
def opened(
    cache: TieredCache, tokens: list[int], namespace: object = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Open ``tokens`` as a runner does (promoting from the tiers first), pinned for the
    block: the tokens cached and a copy of their KV ``[layers, 2, heads, tokens, dim]``."""
    table = cache.open(tokens, namespace)
    try:
        data = cache.pool.read_blocks(table.blocks[: table.indexed])
        yield table.cached_tokens, data.flatten(3, 4)  # [layers, 2, heads, blocks * size, dim]
    finally:
        cache.close(table)


def served(cache: TieredCache, tokens: list[int]) -> int:
    """Tokens an ``open`` of ``tokens`` serves, each checked to be exactly the prompt's KV."""
    with opened(cache, tokens) as (count, got):
        assert got.equal(kv_tensor(tokens)[:, :, :, :count])
        return count
