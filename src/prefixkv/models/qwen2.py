"""Qwen2 (Qwen2, Qwen2.5): Llama's layers with biased q/k/v projections. Qwen2RMSNorm is
Llama's RMS norm line for line and Qwen2MLP Llama's gated MLP, so both go native. A config
with ``use_sliding_window`` makes the layers from ``max_window_layers`` on sliding-window
layers (``layer_types``), served (:mod:`prefixkv.engine.batch.band`)."""

from __future__ import annotations

from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

from prefixkv.models.family import LLAMA_SIBLINGS, Family, GatedMLP

FAMILY = Family(
    name="qwen2",
    model_types=("qwen2",),
    attention="full causal attention (sliding-window layers where layer_types says), rotary "
    "positions, grouped KV heads, biased q/k/v",
    siblings=LLAMA_SIBLINGS,
    norms=(Qwen2RMSNorm,),
    mlps=(GatedMLP((Qwen2MLP,), gate_up=("gate_proj", "up_proj"), activation="act_fn"),),
    keeps="nothing: norms and MLPs are native where hidden_act is SiLU",
)
