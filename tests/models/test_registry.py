"""The family registry (src/prefixkv/models/registry.py): every family module found by its
model types, refused families refused with their reason, and a model type without a family
served as the generic family, which swaps no norm or MLP and says so in one log line."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prefixkv.engine import linear
from prefixkv.engine.fused import JoinedProjection
from prefixkv.engine.native_layers import NativeGatedMLP, NativeRMSNorm
from prefixkv.models import GENERIC, Family, Refused, families, family_of
from tests.engine.conftest import one_thread
from tests.engine.kernel_matrix import unavailable

from .checks import engines
from .tiny_families import LLAMA_LIKE

SERVED = {"llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2"}


def test_every_family_module_is_registered_by_its_model_types() -> None:
    known = families()
    assert {f.name for f in known.values() if isinstance(f, Family)} == SERVED
    assert {f.name for f in known.values() if isinstance(f, Refused)} == {"gemma2", "gemma3"}
    for model_type, family in known.items():
        assert model_type in family.model_types


def test_a_config_is_looked_up_as_its_model_is() -> None:
    config = SimpleNamespace(model_type="qwen3")
    assert family_of(config).name == "qwen3"
    assert family_of(SimpleNamespace(config=config)).name == "qwen3"


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3", "gemma3_text"])
def test_gemma_is_refused_naming_the_sliding_window(model_type: str) -> None:
    from prefixkv.engine.kvbridge import UnsupportedModelError, layout_of

    config = SimpleNamespace(model_type=model_type)
    with pytest.raises(UnsupportedModelError, match=f"'{model_type}'.*sliding-window"):
        family_of(config)
    with pytest.raises(UnsupportedModelError, match="not yet served"):
        layout_of(config, torch.float32)


def test_a_real_gemma2_config_is_refused() -> None:
    from transformers import Gemma2Config

    from prefixkv.models import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="gemma2"):
        family_of(Gemma2Config(vocab_size=100, hidden_size=64, num_hidden_layers=2))


def test_a_mistral_with_a_sliding_window_is_refused_by_the_engine() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    from prefixkv.engine.kvbridge import UnsupportedModelError

    model = MistralForCausalLM(MistralConfig(**LLAMA_LIKE, sliding_window=64)).eval()
    with pytest.raises(UnsupportedModelError, match="sliding window"):
        engines(model)


def test_an_unknown_model_type_is_generic_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="prefixkv.models"):
        assert family_of(SimpleNamespace(model_type="no-such-family")) is GENERIC
        assert family_of(SimpleNamespace(model_type="no-such-family")) is GENERIC
    lines = [r.getMessage() for r in caplog.records if "no-such-family" in r.getMessage()]
    assert len(lines) == 1 and "native norm and MLP swaps off" in lines[0]
    assert "llama" in lines[0] and "qwen2" in lines[0]


def test_a_model_without_a_family_is_served_generic_with_no_native_swaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from transformers import OlmoConfig, OlmoForCausalLM

    with one_thread():
        torch.manual_seed(0)
        plain = OlmoForCausalLM(OlmoConfig(**LLAMA_LIKE)).eval()
        model = copy.deepcopy(plain)
        with caplog.at_level(logging.INFO):
            try:
                linear.linear_kernel("native", model).install(model)
            except RuntimeError as exc:
                unavailable(f"linear kernel 'native' cannot run here: {exc}")
        kinds = [type(m) for m in model.modules()]
        assert NativeRMSNorm not in kinds and NativeGatedMLP not in kinds
        assert kinds.count(JoinedProjection) == 2 * LLAMA_LIKE["num_hidden_layers"]
        assert any(
            "native layers (generic): none swapped" in r.getMessage() for r in caplog.records
        )
        cached, uncached = engines(model)
        prompt = list(range(5, 30))
        cached.generate(prompt, max_tokens=4)
        hit = cached.generate([*prompt, 6], max_tokens=6)
        assert hit.cached_tokens > 0
        assert hit.token_ids == uncached.generate([*prompt, 6], max_tokens=6).token_ids


def test_a_refused_family_is_refused_by_the_loader_from_its_config(tmp_path: Path) -> None:
    from transformers import Gemma2Config

    from prefixkv.engine.loader import load_model
    from prefixkv.models import UnsupportedModelError

    Gemma2Config(vocab_size=100, hidden_size=64, num_hidden_layers=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"gemma2.*sliding-window"):
        load_model(str(tmp_path))  # no tokenizer, no weights: refused before reading them
