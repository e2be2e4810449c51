"""Gemma 2: layers alternate sliding-window (``sliding_window``, 4096 on the released
checkpoints) and full attention (``config.layer_types``), and every layer caps its attention
logits (``attn_logit_softcapping``, ``softcap * tanh(scores / softcap)``) and scales queries
by ``query_pre_attn_scalar ** -0.5``. Every layer keeps all its KV
(:mod:`prefixkv.engine.kvbridge`); under the batch runner every layer is attended by
:mod:`prefixkv.engine.batch.band` (the kernels cap no logits). Sibling projections are
Llama's names, joined. Gemma2RMSNorm scales by ``1 + weight`` in float32: the native RMS
norm replaces it with that weight (:attr:`~prefixkv.models.Family.offset_norms`, four a
layer and the final one). The MLP keeps transformers' module: its activation is GELU-tanh,
not SiLU."""

from __future__ import annotations

from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm

from prefixkv.models.family import LLAMA_SIBLINGS, Family

FAMILY = Family(
    name="gemma2",
    model_types=("gemma2",),
    attention="sliding-window and full causal layers alternating, capped logits "
    "(softcap), rotary positions, grouped KV heads",
    siblings=LLAMA_SIBLINGS,
    norms=(),
    mlps=(),
    keeps="GELU-tanh MLPs keep transformers' modules (not the native gated-SiLU MLP's math)",
    offset_norms=(Gemma2RMSNorm,),
    attn_implementation="eager",
)
