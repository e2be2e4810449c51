"""Between prefixkv's per-layer KV tensors and a transformers ``DynamicCache``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from prefixkv.layout import KVLayout


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


def cache_from_kv(
    kv: Sequence[tuple[torch.Tensor, torch.Tensor]], num_tokens: int, config: Any
) -> DynamicCache:
    """A DynamicCache holding the first ``num_tokens`` positions of ``kv`` (``[heads, seq,
    dim]`` per layer). The tensors are adopted, not copied: pass tensors you own."""
    cache = new_cache(config)
    if num_tokens == 0:
        return cache
    for layer, (keys, values) in zip(_full_attention_layers(cache), kv, strict=True):
        k = keys[None, :, :num_tokens]  # [1, heads, tokens, dim]
        v = values[None, :, :num_tokens]
        # DynamicLayer.update would torch.cat onto an empty tensor, copying every prefix
        # token once more; the lease's tensors are already private, so adopt them.
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache


def kv_from_cache(cache: DynamicCache, num_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Views of the first ``num_tokens`` positions per layer, ``[heads, tokens, dim]``."""
    out = []
    for layer in _full_attention_layers(cache):
        assert layer.keys is not None and layer.values is not None
        out.append((layer.keys[0, :, :num_tokens], layer.values[0, :, :num_tokens]))
    return out
