"""The llama family (src/prefixkv/models/llama.py) on a tiny llama model: see tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import LAYERS, LLAMA_LIKE


def _config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA_LIKE)


@pytest.fixture
def case() -> Case:
    # Native norms: two per layer and the final norm; a native gated MLP per layer.
    return Case("llama", _config, norms=2 * LAYERS + 1, mlps=LAYERS)
