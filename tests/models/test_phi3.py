"""The phi3 family (src/prefixkv/models/phi3.py) on a tiny phi3 model: see tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import LAYERS, LLAMA_LIKE


def _config() -> Any:
    from transformers import Phi3Config

    return Phi3Config(**LLAMA_LIKE)


@pytest.fixture
def case() -> Case:
    # Native norms: two per layer and the final norm; a native gated MLP per layer.
    return Case("phi3", _config, norms=2 * LAYERS + 1, mlps=LAYERS)
