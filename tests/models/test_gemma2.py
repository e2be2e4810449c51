"""The gemma2 family (src/prefixkv/models/gemma2.py) on a tiny gemma2 model, a sliding
layer (window :data:`~tests.models.tiny_families.WINDOW`) then a full one, logits capped on
both: see tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import LLAMA_LIKE, WINDOW


def _config() -> Any:
    from transformers import Gemma2Config

    config = Gemma2Config(**LLAMA_LIKE, head_dim=16, sliding_window=WINDOW)
    assert config.layer_types == ["sliding_attention", "full_attention"]
    assert config.attn_logit_softcapping is not None
    return config


@pytest.fixture
def case() -> Case:
    # Norms and MLPs keep transformers' modules (1 + weight norms, GELU-tanh MLPs).
    return Case("gemma2", _config, norms=0, mlps=0)
