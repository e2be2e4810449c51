"""The mistral family (src/prefixkv/models/mistral.py) on a tiny mistral model: see tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import (  # noqa: F401 (the shared tests, collected here for this family)
    Case,
    kernel,
    models,
    test_batched_requests_match_each_alone,
    test_greedy_tokens_are_transformers_own,
    test_greedy_tokens_match_cached_and_uncached,
    test_the_native_kernel_swaps_what_the_family_claims,
    test_the_registry_finds_the_family,
)
from .tiny_families import LAYERS, LLAMA_LIKE


def _config() -> Any:
    from transformers import MistralConfig

    return MistralConfig(**LLAMA_LIKE, sliding_window=None)


@pytest.fixture
def case() -> Case:
    # Native norms: two per layer and the final norm; a native gated MLP per layer.
    return Case("mistral", _config, norms=2 * LAYERS + 1, mlps=LAYERS)
