"""The gpt2 family (src/prefixkv/models/gpt2.py) on a tiny GPT-2: see tests/models/checks.py.
LayerNorm and the GELU MLP keep transformers' modules: no native swap."""

from __future__ import annotations

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


@pytest.fixture
def case() -> Case:
    return Case("gpt2", norms=0, mlps=0)
