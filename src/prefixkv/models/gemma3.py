"""Gemma 3: five of every six layers attend through a sliding window (``layer_types``;
their rotary base is ``rope_local_base_freq``, applied before attention), the sixth is full
attention; queries and keys are RMS-normed per head. Every layer keeps all its KV
(:mod:`prefixkv.engine.kvbridge`); under the batch runner the sliding layers are attended by
:mod:`prefixkv.engine.batch.band`, the full ones by the attention kernel. Sibling
projections are Llama's names, joined. Gemma3RMSNorm scales by ``1 + weight`` in float32:
the native RMS norm replaces it with that weight (:attr:`~prefixkv.models.Family.offset_norms`,
six a layer with the query and key norms, and the final one). The MLP keeps transformers'
module: its activation is GELU-tanh, not SiLU. Text prompts only: ``gemma3`` (the multimodal model) is served as its text
decoder sees text; images are not."""

from __future__ import annotations

from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

from prefixkv.models.family import LLAMA_SIBLINGS, Family

FAMILY = Family(
    name="gemma3",
    model_types=("gemma3", "gemma3_text"),
    attention="sliding-window layers with a full causal layer every sixth, rotary "
    "positions, RMS-normed queries and keys, grouped KV heads",
    siblings=LLAMA_SIBLINGS,
    norms=(),
    mlps=(),
    keeps="GELU-tanh MLPs keep transformers' modules (not the native gated-SiLU MLP's math)",
    offset_norms=(Gemma3RMSNorm,),
)
