"""Between prefixkv's per-layer KV tensors and a transformers ``DynamicCache``, and which
layer kinds prefixkv serves.

prefixkv serves a decoder whose every layer is full attention or sliding-window attention.
Every layer keeps the KV of every token (docs/decisions.md, "Sliding-window layers keep
every block"), so a cached prefix holds all the KV any layer needs; a sliding layer applies
its window when it attends: transformers' sliding mask over absolute positions under the
serial engine (its caches here are full ``DynamicLayer``s, never the
``DynamicSlidingWindowLayer`` that drops old tokens), the paged attention's band under the
batch runner. Any other kind (linear attention, recurrent or convolution states, chunked
attention, layers reading another layer's KV) and encoder-decoder models are refused,
naming the kind.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from prefixkv.cache.layout import KVLayout
from prefixkv.models import UnsupportedModelError, family_of

__all__ = [
    "SERVED_KINDS",
    "UnsupportedModelError",
    "check_served",
    "layer_kinds",
    "layout_of",
    "new_cache",
]

SERVED_KINDS = ("full_attention", "sliding_attention")
"""The layer kinds (``config.layer_types`` values) prefixkv serves."""


def layout_of(config: Any, dtype: torch.dtype) -> KVLayout:
    """The KV layout of a decoder-only transformers model config, as its family reads it
    (:func:`prefixkv.models.family_of`). Raises UnsupportedModelError for a refused family."""
    return family_of(config).layout(config, dtype)


def layer_kinds(config: Any) -> tuple[str, ...]:
    """Each decoder layer's kind as transformers' caches read it: ``config.layer_types``
    where the config has them, else ``sliding_attention`` where a layer's config sets
    ``sliding_window``, ``chunked_attention`` where it sets ``attention_chunk_size``,
    ``full_attention`` otherwise; ``dummy`` for a layer keeping no KV of its own (reading
    another layer's, or without attention). Read here rather than through transformers'
    ``get_layer_types_and_kwargs``, which only 5.2x has (the floor is 5.6)."""
    text = config.get_text_config(decoder=True)
    layers = int(text.num_hidden_layers)
    kinds = list(getattr(text, "layer_types", None) or [])
    if not kinds:
        # a heterogeneous config (transformers 5.2x) describes each layer; else one for all
        per_layer = getattr(text, "per_layer_config", None) or [text] * layers
        kinds = [_kind_of(layer) for layer in per_layer]
    modes = getattr(text, "kv_sharing_modes", None) or ["own"] * len(kinds)
    kinds = ["dummy" if mode == "reuse" else kind for kind, mode in zip(kinds, modes, strict=True)]
    shared = int(getattr(text, "num_kv_shared_layers", 0) or 0)  # the last ones reuse KV
    kinds = kinds[: len(kinds) - shared] + ["dummy"] * shared
    return tuple("dummy" if kind in ("moe", "mlp") else kind for kind in kinds)


def _kind_of(layer_config: Any) -> str:
    if getattr(layer_config, "sliding_window", None) is not None:
        return "sliding_attention"
    if getattr(layer_config, "attention_chunk_size", None) is not None:
        return "chunked_attention"
    return "full_attention"


def check_served(config: Any) -> tuple[str, ...]:
    """The layer kinds of ``config`` (:func:`layer_kinds`). Raises UnsupportedModelError,
    naming the kind, for an encoder-decoder model or a layer kind outside
    :data:`SERVED_KINDS`."""
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"prefixkv serves decoder-only models; {config.model_type!r} is encoder-decoder"
        )
    kinds = layer_kinds(config)
    refused = sorted({kind for kind in kinds if kind not in SERVED_KINDS})
    if refused:
        where = [i for i, kind in enumerate(kinds) if kind not in SERVED_KINDS]
        raise UnsupportedModelError(
            f"prefixkv serves full and sliding-window attention layers only; "
            f"{config.model_type!r} has {', '.join(refused)} layers ({len(where)} of "
            f"{len(kinds)}, from layer {where[0]})"
        )
    return kinds


def new_cache(config: Any) -> DynamicCache:
    """An empty DynamicCache for ``config``, a full ``DynamicLayer`` per layer (sliding
    layers too: the mask applies their window). Raises UnsupportedModelError as
    :func:`check_served` does."""
    kinds = check_served(config)
    cache = DynamicCache()
    cache.layers = [DynamicLayer() for _ in kinds]  # type: ignore[no-untyped-call]
    return cache
