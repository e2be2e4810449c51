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

SERVED = {"llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2", "gemma2", "gemma3"}


def test_every_family_module_is_registered_by_its_model_types() -> None:
    known = families()
    assert {f.name for f in known.values() if isinstance(f, Family)} == SERVED
    assert not [f.name for f in known.values() if isinstance(f, Refused)]
    for model_type, family in known.items():
        assert model_type in family.model_types


def test_a_config_is_looked_up_as_its_model_is() -> None:
    config = SimpleNamespace(model_type="qwen3")
    assert family_of(config).name == "qwen3"
    assert family_of(SimpleNamespace(config=config)).name == "qwen3"


def test_a_refused_family_is_refused_naming_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefixkv.engine.kvbridge import UnsupportedModelError, layout_of

    refused = Refused("nofam", ("nofam",), "a reason")
    monkeypatch.setattr("prefixkv.models.registry.families", lambda: {"nofam": refused})
    config = SimpleNamespace(model_type="nofam")
    with pytest.raises(UnsupportedModelError, match=r"'nofam' .*: a reason"):
        family_of(config)
    with pytest.raises(UnsupportedModelError, match="a reason"):
        layout_of(config, torch.float32)


def _qwen3_next() -> object:
    from transformers import Qwen3NextConfig

    return Qwen3NextConfig(**LLAMA_LIKE)


def _llama4() -> object:
    from transformers import Llama4TextConfig

    return Llama4TextConfig(**{**LLAMA_LIKE, "num_hidden_layers": 4})


def _t5() -> object:
    from transformers import T5Config

    return T5Config(vocab_size=100, d_model=64, num_layers=2)


def _mamba() -> object:
    from transformers import MambaConfig

    return MambaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (_qwen3_next, "linear_attention layers"),
        (_llama4, "chunked_attention layers"),
        # transformers 5.6 names Mamba's layers "mamba", 5.23 "linear_attention"
        (_mamba, "(mamba|linear_attention) layers"),
        (_t5, "'t5' is encoder-decoder"),
    ],
    ids=["linear", "chunked", "recurrent", "encoder-decoder"],
)
def test_a_layer_kind_not_served_is_refused_naming_it(config: object, named: str) -> None:
    from prefixkv.engine.kvbridge import UnsupportedModelError, new_cache

    with pytest.raises(UnsupportedModelError, match=named):
        new_cache(config())  # type: ignore[operator]


def test_sliding_and_full_layers_get_full_caches() -> None:
    from transformers import Gemma2Config, MistralConfig
    from transformers.cache_utils import DynamicLayer

    from prefixkv.engine.kvbridge import layer_kinds, new_cache

    gemma = Gemma2Config(**LLAMA_LIKE, head_dim=16, sliding_window=8)
    assert layer_kinds(gemma) == ("sliding_attention", "full_attention")
    mistral = MistralConfig(**LLAMA_LIKE, sliding_window=8)
    assert layer_kinds(mistral) == ("sliding_attention", "sliding_attention")
    for config in (gemma, mistral):
        assert [type(layer) for layer in new_cache(config).layers] == [DynamicLayer] * 2


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


def test_a_layer_kind_not_served_is_refused_by_the_loader_from_its_config(
    tmp_path: Path,
) -> None:
    from prefixkv.engine.loader import load_model
    from prefixkv.models import UnsupportedModelError

    _llama4().save_pretrained(tmp_path)  # type: ignore[attr-defined]
    with pytest.raises(UnsupportedModelError, match=r"llama4_text.*chunked_attention"):
        load_model(str(tmp_path))  # no tokenizer, no weights: refused before reading them
