"""The gemma3 family (src/prefixkv/models/gemma3.py) on a tiny gemma3 text model, a sliding
layer (window :data:`~tests.models.tiny_families.WINDOW`) then a full one: see
tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import LAYERS, LLAMA_LIKE, UNTIED, WINDOW


def _config() -> Any:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        **LLAMA_LIKE,
        **UNTIED,
        head_dim=16,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"],
    )


@pytest.fixture
def case() -> Case:
    # Native norms (weight 1 + weight): four per layer, q_norm and k_norm per layer, and the
    # final norm; the GELU-tanh MLPs keep transformers' modules.
    return Case("gemma3", _config, norms=6 * LAYERS + 1, mlps=0)
