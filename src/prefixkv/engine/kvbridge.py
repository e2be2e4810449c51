"""Between prefixkv's per-layer KV tensors and a transformers ``DynamicCache``."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from prefixkv.cache.layout import KVLayout
from prefixkv.models import UnsupportedModelError, family_of

__all__ = ["UnsupportedModelError", "layout_of", "new_cache"]


def layout_of(config: Any, dtype: torch.dtype) -> KVLayout:
    """The KV layout of a decoder-only transformers model config, as its family reads it
    (:func:`prefixkv.models.family_of`). Raises UnsupportedModelError for a refused family."""
    return family_of(config).layout(config, dtype)


def _full_attention_layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = list(cache.layers)
    for layer in layers:
        if type(layer) is not DynamicLayer:
            raise UnsupportedModelError(
                f"prefixkv reuses full-attention KV only; this model's cache has a "
                f"{type(layer).__name__} layer (sliding window or linear attention)"
            )
    return layers  # type: ignore[return-value]


def new_cache(config: Any) -> DynamicCache:
    """An empty DynamicCache for ``config``; raises UnsupportedModelError for models whose
    layers are not all full attention."""
    cache = DynamicCache(config=config)
    _full_attention_layers(cache)
    return cache
