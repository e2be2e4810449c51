"""Gemma 2: layers alternate sliding-window (``sliding_window``, 4096 on the released
checkpoints) and full attention (``config.layer_types``), and every layer caps its attention
logits (``attn_logit_softcapping``, ``softcap * tanh(scores / softcap)``) and scales queries
by ``query_pre_attn_scalar ** -0.5``. Every layer keeps all its KV
(:mod:`prefixkv.engine.kvbridge`); under the batch runner every layer is attended by
:mod:`prefixkv.engine.batch.band` (the kernels cap no logits). Sibling projections are
Llama's names, joined. Norms and MLPs keep transformers' modules: Gemma2RMSNorm scales by
``1 + weight`` in float32, and the MLP's activation is GELU-tanh, not SiLU."""

from __future__ import annotations

from prefixkv.models.family import LLAMA_SIBLINGS, Family

FAMILY = Family(
    name="gemma2",
    model_types=("gemma2",),
    attention="sliding-window and full causal layers alternating, capped logits "
    "(softcap), rotary positions, grouped KV heads",
    siblings=LLAMA_SIBLINGS,
    norms=(),
    mlps=(),
    keeps="norms (1 + weight, float32) and GELU-tanh MLPs keep transformers' modules (not "
    "the native RMS norm's or gated-SiLU MLP's math)",
)
