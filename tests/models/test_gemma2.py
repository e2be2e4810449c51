"""The gemma2 family (src/prefixkv/models/gemma2.py) on a tiny gemma2 model, a sliding
layer (window :data:`~tests.models.tiny_families.WINDOW`) then a full one, logits capped on
both: see tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import LAYERS, LLAMA_LIKE, UNTIED, WINDOW


def _config() -> Any:
    from transformers import Gemma2Config

    # A cap of 1 (the released models': 50) bends this tiny model's scores enough that
    # greedy tokens change without it.
    config = Gemma2Config(
        **LLAMA_LIKE, **UNTIED, head_dim=16, sliding_window=WINDOW, attn_logit_softcapping=1.0
    )
    assert config.layer_types == ["sliding_attention", "full_attention"]
    return config


@pytest.fixture
def case() -> Case:
    # Native norms (weight 1 + weight): four per layer and the final norm; the GELU-tanh
    # MLPs keep transformers' modules.
    return Case("gemma2", _config, norms=4 * LAYERS + 1, mlps=0)
