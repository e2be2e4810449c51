"""Parameters still backed by the checkpoint's memory map get their own memory, so the file's
mapping (the whole checkpoint, resident) goes once the model is loaded."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from prefixkv import Engine
from prefixkv.engine.mapped import copy_mapped_weights

from .tiny import tiny_tokenizer


def _mapped_files() -> set[str]:
    """The paths of the files mapped into this process."""
    with open("/proc/self/maps") as maps:
        fields = [line.split(None, 5) for line in maps]
    return {f[5].strip() for f in fields if len(f) == 6}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mapped")
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_copies_free_the_checkpoint_mapping(folder: Path) -> None:
    weights = str(folder / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    mapped = [p for p in model.parameters() if not p.untyped_storage().resizable()]
    assert mapped and weights in _mapped_files()  # the premise: loading maps the file

    copied = copy_mapped_weights(model)
    gc.collect()
    assert copied == sum(p.numel() * p.element_size() for p in mapped)
    assert weights not in _mapped_files()
    for name, param in model.named_parameters():
        assert param.untyped_storage().resizable(), name
        assert torch.equal(param, before[name]) and param.dtype == before[name].dtype, name
    assert copy_mapped_weights(model) == 0  # nothing left to copy


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_a_loaded_engine_keeps_no_checkpoint_mapped(folder: Path) -> None:
    engine = Engine.from_pretrained(str(folder), cache_bytes=1 << 20)
    gc.collect()
    assert str(folder / "model.safetensors") not in _mapped_files()
    assert all(p.untyped_storage().resizable() for p in engine.model.parameters())
