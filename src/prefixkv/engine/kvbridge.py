"""Between prefixkv's per-layer KV tensors and a transformers ``DynamicCache``."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from prefixkv.cache.layout import KVLayout


class UnsupportedModelError(TypeError):
    """The model's KV cache is not plain full attention, so prefixes cannot be reused as is."""


def layout_of(config: Any, dtype: torch.dtype) -> KVLayout:
    """The KV layout of a decoder-only transformers model config (Llama-style attention)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return KVLayout(text.num_hidden_layers, kv_heads, head_dim, dtype)


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
