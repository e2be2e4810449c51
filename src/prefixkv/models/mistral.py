"""Mistral: Llama's layers. MistralRMSNorm is Llama's RMS norm line for line and MistralMLP
Llama's gated MLP, so both go native. Mistral 7B v0.1's config sets ``sliding_window`` (4096),
which makes every layer a sliding-window layer (every layer keeps all its KV, the window
applies when it attends: :mod:`prefixkv.engine.batch.band`); later Mistral configs set it
to null."""

from __future__ import annotations

from transformers.models.mistral.modeling_mistral import MistralMLP, MistralRMSNorm

from prefixkv.models.family import LLAMA_SIBLINGS, Family, GatedMLP

FAMILY = Family(
    name="mistral",
    model_types=("mistral",),
    attention="full causal attention, or a sliding window on every layer where "
    "sliding_window is set, rotary positions, grouped KV heads",
    siblings=LLAMA_SIBLINGS,
    norms=(MistralRMSNorm,),
    mlps=(GatedMLP((MistralMLP,), gate_up=("gate_proj", "up_proj"), activation="act_fn"),),
    keeps="nothing: norms and MLPs are native where hidden_act is SiLU",
)
