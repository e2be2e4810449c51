"""GPT-2: full causal attention with learned absolute positions; its projections are
transformers' ``Conv1D`` (``c_attn`` already joins q/k/v), which the linear kernels do not
replace (only the ``nn.Linear`` head runs on them). It normalises with LayerNorm (mean
subtracted, a bias) and its MLP is ``c_proj(gelu_new(c_fc(x)))``, not gated: neither is the
native kernels' math, so both keep transformers' modules."""

from __future__ import annotations

from prefixkv.models.family import Family

FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    attention="full causal attention, learned absolute positions, q/k/v joined in c_attn",
    siblings=(),
    norms=(),
    mlps=(),
    keeps="LayerNorm and the GELU MLP keep transformers' modules (not the native RMS norm's "
    "or gated-SiLU MLP's math)",
)
