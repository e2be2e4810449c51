"""The qwen3 family (src/prefixkv/models/qwen3.py) on a tiny qwen3 model: see tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import LAYERS, LLAMA_LIKE


def _config() -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(**LLAMA_LIKE, head_dim=16)


@pytest.fixture
def case() -> Case:
    # Native norms: two per layer, q_norm and k_norm per layer, and the final norm; a native
    # gated MLP per layer.
    return Case("qwen3", _config, norms=4 * LAYERS + 1, mlps=LAYERS)
