"""The mistral family (src/prefixkv/models/mistral.py) on a tiny mistral model whose every
layer attends through a sliding window (:data:`~tests.models.tiny_families.WINDOW`, Mistral
7B v0.1's kind of config): see tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import LAYERS, LLAMA_LIKE, WINDOW


def _config() -> Any:
    from transformers import MistralConfig

    return MistralConfig(**LLAMA_LIKE, sliding_window=WINDOW)


@pytest.fixture
def case() -> Case:
    # Native norms: two per layer and the final norm; a native gated MLP per layer.
    return Case("mistral", _config, norms=2 * LAYERS + 1, mlps=LAYERS)
