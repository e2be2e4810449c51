"""Llama (SmolLM2, Llama 2/3, TinyLlama, ...): full causal attention with rotary positions,
separate q/k/v projections, RMS norms and a gated-SiLU MLP. Every native swap applies; the
model fingerprint names the native MLP's joined projection ``gate_up``."""

from __future__ import annotations

from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from prefixkv.models.family import LLAMA_SIBLINGS, Family, GatedMLP

FAMILY = Family(
    name="llama",
    model_types=("llama",),
    attention="full causal attention on every layer, rotary positions, grouped KV heads",
    siblings=LLAMA_SIBLINGS,
    norms=(LlamaRMSNorm,),
    mlps=(GatedMLP((LlamaMLP,), gate_up=("gate_proj", "up_proj"), activation="act_fn"),),
    keeps="nothing: norms and MLPs are native where hidden_act is SiLU",
)
