"""The model fingerprint names everything that changes the bits of the KV: the weights and
layout, and the arithmetic (attention, kernel library, PyTorch build and CPU, threads where
PyTorch's own kernels compute). Servers with other settings then never share tier records
(a real pair of replicas: tests/server/test_tiers.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prefixkv.engine.fingerprint import (
    Arithmetic,
    arithmetic,
    model_fingerprint,
    serial_attention,
)
from prefixkv.engine.kvbridge import layout_of
from prefixkv.engine.linear import linear_kernel

from .tiny import tiny_llama

pytest.importorskip("xxhash")

BASE = Arithmetic("batch:native", "sources=abc flags=-O3", "torch 2.13.0 build x\ncpu y", 0)


def test_every_field_of_the_arithmetic_changes_the_fingerprint() -> None:
    model = tiny_llama()
    layout = layout_of(model.config, torch.float32)
    base = model_fingerprint(model, layout, BASE)
    assert model_fingerprint(model, layout, dataclasses.replace(BASE)) == base
    changed = [
        dataclasses.replace(BASE, attention="batch:torch"),
        dataclasses.replace(BASE, attention="serial:sdpa"),
        dataclasses.replace(BASE, kernels="sources=abd flags=-O3"),
        dataclasses.replace(BASE, kernels="none"),
        dataclasses.replace(BASE, platform="torch 2.13.1 build x\ncpu y"),
        dataclasses.replace(BASE, platform="torch 2.13.0 build x\ncpu z"),
        dataclasses.replace(BASE, threads=2),
    ]
    prints = {model_fingerprint(model, layout, c) for c in changed}
    assert base not in prints and len(prints) == len(changed)


def test_the_arithmetic_of_a_model_names_what_computes_it() -> None:
    from prefixkv.kernels.build import identity
    from prefixkv.kernels.target import cpu_flags

    plain = tiny_llama()
    assert serial_attention(plain) == f"serial:{plain.config._attn_implementation}"
    torch_ops = arithmetic(plain, "batch:torch", 3)
    assert (torch_ops.kernels, torch_ops.threads) == ("none", 3)
    assert torch.__version__ in torch_ops.platform and cpu_flags() in torch_ops.platform
    # a native attention kernel brings the library in; the thread count stays (PyTorch's
    # own linear layers still compute)
    assert arithmetic(plain, "batch:native", 3) == dataclasses.replace(
        torch_ops, attention="batch:native", kernels=identity()
    )
    native = tiny_llama()
    linear_kernel("native", native).install(native)
    assert arithmetic(native, "batch:native", 3).threads == 0  # only fixed-order sums
    assert arithmetic(native, "batch:torch", 3).threads == 3
    assert arithmetic(native, "serial:sdpa", 3).kernels == identity()


@pytest.mark.parametrize("attention", ["native", "batch", "batch:", "gpu:native"])
def test_an_attention_of_another_form_is_refused(attention: str) -> None:
    with pytest.raises(ValueError, match="attention must be"):
        arithmetic(tiny_llama(), attention, 1)


def test_a_window_or_a_logit_cap_changes_the_fingerprint() -> None:
    from transformers import MistralConfig

    from tests.models.tiny_families import LLAMA_LIKE, tiny_model

    models = [tiny_model(MistralConfig(**LLAMA_LIKE, sliding_window=w)) for w in (None, 8, 16)]
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())  # the same weights
    layout = layout_of(models[0].config, torch.float32)
    prints = {model_fingerprint(model, layout, BASE) for model in models}
    assert len(prints) == 3
    capped = tiny_model(MistralConfig(**LLAMA_LIKE, sliding_window=None))
    capped.load_state_dict(models[0].state_dict())
    capped.config.attn_logit_softcapping = 50.0
    assert model_fingerprint(capped, layout, BASE) not in prints
