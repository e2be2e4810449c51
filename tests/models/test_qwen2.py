"""The qwen2 family (src/prefixkv/models/qwen2.py) on a tiny qwen2 model: see tests/models/checks.py."""

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
    from transformers import Qwen2Config

    return Qwen2Config(**LLAMA_LIKE)


@pytest.fixture
def case() -> Case:
    # Native norms: two per layer and the final norm; a native gated MLP per layer.
    return Case("qwen2", _config, norms=2 * LAYERS + 1, mlps=LAYERS)


def test_a_qwen2_without_silu_keeps_its_mlps_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

    from prefixkv.engine import linear
    from tests.engine.conftest import one_thread
    from tests.engine.kernel_matrix import unavailable

    from .tiny_families import LLAMA_LIKE

    with one_thread(), caplog.at_level(logging.INFO, logger="prefixkv.engine"):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(**LLAMA_LIKE, hidden_act="gelu")).eval()
        ids = torch.randint(0, model.config.vocab_size, (1, 20))
        with torch.inference_mode():
            before = model(ids).logits
            try:
                linear.linear_kernel("native", model).install(model)
            except RuntimeError as exc:
                unavailable(f"linear kernel 'native' cannot run here: {exc}")
            after = model(ids).logits
    assert sum(isinstance(m, Qwen2MLP) for m in model.modules()) == LAYERS
    assert any("0 MLPs swapped (hidden_act 'gelu'" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
