"""Qwen3: Llama's layers plus an RMS norm over each head's queries and keys (``q_norm``,
``k_norm``, over ``head_dim``). Qwen3RMSNorm is Llama's RMS norm line for line, so the layer
norms, the final norm and the head norms all go native (4 per layer and 1), and Qwen3MLP is
Llama's gated MLP. Sliding-window layers (``layer_types``) are served like Qwen2's."""

from __future__ import annotations

from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm

from prefixkv.models.family import LLAMA_SIBLINGS, Family, GatedMLP

FAMILY = Family(
    name="qwen3",
    model_types=("qwen3",),
    attention="full causal attention (sliding-window layers where layer_types says), rotary "
    "positions, grouped KV heads, RMS-normed queries and keys",
    siblings=LLAMA_SIBLINGS,
    norms=(Qwen3RMSNorm,),
    mlps=(GatedMLP((Qwen3MLP,), gate_up=("gate_proj", "up_proj"), activation="act_fn"),),
    keeps="nothing: norms (head norms too) and MLPs are native where hidden_act is SiLU",
)
