"""The mistral family (src/prefixkv/models/mistral.py) on a tiny mistral model: see tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import LAYERS, LLAMA_LIKE


def _config() -> Any:
    from transformers import MistralConfig

    return MistralConfig(**LLAMA_LIKE, sliding_window=None)


@pytest.fixture
def case() -> Case:
    # Native norms: two per layer and the final norm; a native gated MLP per layer.
    return Case("mistral", _config, norms=2 * LAYERS + 1, mlps=LAYERS)
