"""Parameters still backed by the checkpoint's memory map get their own memory, so the file's
mapping (the whole checkpoint, resident) goes once the model is loaded."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefixkv import Engine
from prefixkv.engine.mapped import copy_mapped_weights

from .tiny import tiny_llama, tiny_tokenizer


def _mapped_files() -> set[str]:
    """The paths of the files mapped into this process."""
    with open("/proc/self/maps") as maps:
        fields = [line.split(None, 5) for line in maps]
    return {f[5].strip() for f in fields if len(f) == 6}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama and its tokenizer, saved as a model folder (safetensors)."""
    folder = tmp_path_factory.mktemp("mapped")
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
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
