"""KV memory of sliding-window models: prefixkv's store (every layer keeps every token)
against a store that would keep, for its sliding layers, only the window behind one cached
end. Computed from configs, not measured on a run: the configs are transformers' own config
classes filled with the published checkpoints' ``config.json`` sizes (typed in below; no
download), so the layer pattern (``layer_types``) is transformers' own default for each.

    PYTHONPATH=src python benchmarks/window_memory.py

A window-only store keeps, for a sliding layer, the ``window - 1`` tokens before a cached
end (what transformers' ``DynamicSlidingWindowLayer`` keeps: the next query sees ``window``
tokens, itself included); full layers keep everything in both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from prefixkv.engine.kvbridge import layer_kinds, layout_of

CONTEXTS = (8192, 32768)


def _mistral_7b_v01() -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        sliding_window=4096,
    )


def _gemma2(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int) -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        sliding_window=4096,
    )


def _gemma3(layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int) -> Any:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        sliding_window=1024,
    )


MODELS: dict[str, Callable[[], Any]] = {
    "Mistral 7B v0.1": _mistral_7b_v01,
    "Gemma 2 9B": lambda: _gemma2(42, 3584, 16, 8, 256),
    "Gemma 2 27B": lambda: _gemma2(46, 4608, 32, 16, 128),
    "Gemma 3 4B": lambda: _gemma3(34, 2560, 8, 4, 256),
    "Gemma 3 12B": lambda: _gemma3(48, 3840, 16, 8, 256),
    "Gemma 3 27B": lambda: _gemma3(62, 5376, 32, 16, 128),
}


def stored_bytes(config: Any, context: int) -> tuple[int, int]:
    """bfloat16 KV bytes of one ``context``-token prefix: prefixkv's store (every layer,
    every token) and a window-only store (sliding layers: ``window - 1`` tokens)."""
    layout = layout_of(config, torch.bfloat16)
    per_layer = layout.bytes_per_token // layout.num_layers  # keys and values, one layer
    kinds = layer_kinds(config)
    window = int(config.sliding_window)
    kept = sum(context if kind == "full_attention" else min(context, window - 1) for kind in kinds)
    return per_layer * context * len(kinds), per_layer * kept


def main() -> None:
    print("| model | layers (sliding) | window | context | prefixkv | window-only | saved |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, make in MODELS.items():
        config = make()
        kinds = layer_kinds(config)
        sliding = sum(kind == "sliding_attention" for kind in kinds)
        for context in CONTEXTS:
            full, windowed = stored_bytes(config, context)
            print(
                f"| {name} | {len(kinds)} ({sliding}) | {config.sliding_window} | {context:,} "
                f"| {full / 2**20:,.0f} MiB | {windowed / 2**20:,.0f} MiB "
                f"| {1 - windowed / full:.0%} |"
            )


if __name__ == "__main__":
    main()
