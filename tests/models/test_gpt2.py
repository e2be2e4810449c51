"""The gpt2 family (src/prefixkv/models/gpt2.py) on a tiny GPT-2: see tests/models/checks.py.
LayerNorm and the GELU MLP keep transformers' modules: no native swap."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import IDS, INIT, LAYERS, VOCAB


def _config() -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=LAYERS,
        n_head=4,
        n_positions=512,
        initializer_range=INIT,
        **IDS,
    )


@pytest.fixture
def case() -> Case:
    return Case("gpt2", _config, norms=0, mlps=0)


def test_its_conv1d_projections_keep_the_thread_count_in_the_fingerprint(case: Case) -> None:
    from prefixkv.engine import linear
    from prefixkv.engine.fingerprint import arithmetic
    from tests.engine.kernel_matrix import unavailable

    model = case.model()
    try:
        linear.linear_kernel("native", model).install(model)
    except RuntimeError as exc:
        unavailable(f"linear kernel 'native' cannot run here: {exc}")
    # Only the head runs natively; c_attn, c_proj and c_fc are PyTorch's addmm, whose sums may
    # split by thread, so KV computed on 3 threads is not named as if thread-independent.
    assert arithmetic(model, "batch:native", 3).threads == 3
