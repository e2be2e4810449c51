"""Gemma 3: five of every six layers attend through a sliding window, which prefixkv does
not serve yet (its KV cache is not plain full attention). Were it served, its norms would
still keep transformers' modules: Gemma3RMSNorm scales by ``1 + weight`` and computes in
float32, and the MLP's activation is GELU-tanh, not SiLU."""

from __future__ import annotations

from prefixkv.models.family import Refused

FAMILY = Refused(
    name="gemma3",
    model_types=("gemma3", "gemma3_text"),
    reason="sliding-window layers: not yet served",
)
