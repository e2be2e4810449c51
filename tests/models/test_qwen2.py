"""The qwen2 family (src/prefixkv/models/qwen2.py) on a tiny qwen2 model: see tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
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

    from .checks import logits_around_native_install
    from .tiny_families import LLAMA_LIKE

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**LLAMA_LIKE, hidden_act="gelu")).eval()
    with caplog.at_level(logging.INFO, logger="prefixkv.engine"):
        before, after = logits_around_native_install(model, (1, 20))
    assert sum(isinstance(m, Qwen2MLP) for m in model.modules()) == LAYERS
    assert any("0 MLPs swapped (hidden_act 'gelu'" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
