"""The gemma3 family (src/prefixkv/models/gemma3.py) on a tiny multimodal gemma3 model
(``Gemma3ForConditionalGeneration``, a one-layer vision tower), given text prompts only: its
text decoder is a sliding layer (window :data:`~tests.models.tiny_families.WINDOW`) then a
full one. See tests/models/checks.py."""

from __future__ import annotations

from typing import Any

import pytest

from .checks import *  # noqa: F403 (the shared tests, collected for this family)
from .checks import Case
from .tiny_families import INIT, LAYERS, LLAMA_LIKE, UNTIED, WINDOW


def _config() -> Any:
    from transformers import Gemma3Config

    text = {
        **LLAMA_LIKE,
        "head_dim": 16,
        "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
    }
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        initializer_range=INIT,
        **UNTIED,
    )


@pytest.fixture
def case() -> Case:
    # Native norms (weight 1 + weight): the text decoder's six per layer and final one, and
    # the image projector's; the GELU-tanh MLPs keep transformers' modules.
    return Case("gemma3", _config, norms=6 * LAYERS + 2, mlps=0)
