"""What prefixkv knows about each model family transformers implements: one module per
family (``llama.py``, ``qwen2.py``, ...), each defining ``FAMILY``, a frozen
:class:`~prefixkv.models.family.Family` (or a :class:`~prefixkv.models.family.Refused` for a
family prefixkv does not serve yet), found by :func:`family_of` through ``config.model_type``.

A family says how to read the KV layout from a config, which sibling projections run as one
GEMM (:mod:`prefixkv.engine.fused`), which norm classes the native RMS norm replaces, which
MLP classes the native gated-SiLU MLP replaces, and what attention its layers use. Adding a
family is one module here plus its tests under ``tests/models/``; nothing else changes.

A ``model_type`` without a module here is served as :data:`~prefixkv.models.registry.GENERIC`
(as transformers runs any model it implements): sibling projections named as Llama's are
still joined (exact whatever the call order), no norm or MLP is replaced, and one log line
says so. It is still refused unless every layer is full or sliding-window attention
(:func:`prefixkv.engine.kvbridge.check_served`), and the batch runner still probes its
attention (:func:`prefixkv.engine.batch.attention.check_supported`).
"""

from prefixkv.extras import require

require("hf", "prefixkv.models")

from prefixkv.models.family import (  # noqa: E402
    Family,
    GatedMLP,
    Refused,
    UnsupportedModelError,
    standard_layout,
)
from prefixkv.models.registry import GENERIC, families, family_of  # noqa: E402

__all__ = [
    "GENERIC",
    "Family",
    "GatedMLP",
    "Refused",
    "UnsupportedModelError",
    "families",
    "family_of",
    "standard_layout",
]
