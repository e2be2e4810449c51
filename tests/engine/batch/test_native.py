"""The native attention kernel in the batch runner: picked by ``auto`` where it builds and
replaced by PyTorch ops where it cannot run, one call per layer for a whole step. The kernel's
own tests (equal to attention, the door's checks, the build) are in tests/kernels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from prefixkv.cli.setup import CommandError, command_errors
from prefixkv.engine.batch import native
from prefixkv.engine.batch.cascade import CascadeKernel
from prefixkv.engine.batch.kernels import attention_kernel
from prefixkv.engine.batch.native import NativeKernel, NativePlan
from prefixkv.engine.batch.records import BatchLimits
from prefixkv.engine.batch.runner import BatchRunner
from prefixkv.engine.build import EngineSettings, assemble
from prefixkv.kernels.build import NativeUnavailable

from .test_attention import HEADS, KV_HEADS
from .test_cascade import five_questions_on_one_document

CPU = torch.device("cpu")


def test_auto_is_native_where_it_builds_and_torch_otherwise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(attention_kernel("auto", HEADS, KV_HEADS, torch.float32, CPU), NativeKernel)
    assert isinstance(attention_kernel("torch", HEADS, KV_HEADS, torch.float32, CPU), CascadeKernel)
    half = attention_kernel("auto", HEADS, KV_HEADS, torch.float16, CPU)
    assert isinstance(half, CascadeKernel)
    with pytest.raises(NativeUnavailable, match="query heads per kv head"):
        NativeKernel.create(17, torch.float32, CPU)

    def missing(cache_dir: Path | None = None) -> Any:
        raise NativeUnavailable("no C compiler found (install gcc, or set CC)")

    monkeypatch.setattr(native, "load", missing)
    with caplog.at_level(logging.WARNING, logger="prefixkv.engine"):
        assert isinstance(
            attention_kernel("auto", HEADS, KV_HEADS, torch.float32, CPU), CascadeKernel
        )
    assert "no C compiler" in caplog.text
    with pytest.raises(NativeUnavailable, match="no C compiler"):
        attention_kernel("native", HEADS, KV_HEADS, torch.float32, CPU)
    with pytest.raises(ValueError, match="unknown attention kernel 'fast'"):
        attention_kernel("fast", HEADS, KV_HEADS, torch.float32, CPU)


def test_requests_on_one_document_decode_in_one_call_per_layer_and_match_alone(
    parts: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    attend = NativePlan.attend

    def counted(plan: NativePlan, *args: Any) -> None:
        calls.append(len(plan.items.rows))
        attend(plan, *args)

    monkeypatch.setattr(NativePlan, "attend", counted)
    asked = five_questions_on_one_document(parts, "native")
    assert calls.count(asked) >= 9  # all five decoding at once, one call a layer


def test_serve_options_pick_the_kernel_and_name_one_that_cannot_run(
    parts: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = parts
    limits = BatchLimits(max_running=4, max_batch_tokens=8)
    for name, kind in (("auto", NativeKernel), ("torch", CascadeKernel)):
        settings = EngineSettings(
            cache_bytes=1 << 20, block_size=4, backend="batch", attention_kernel=name, limits=limits
        )
        built = assemble(settings, model, tokenizer, "tiny")
        assert built.attention == f"batch:{kind.name}"  # the fingerprint names what runs
        assert isinstance(built.runner, BatchRunner)
        assert isinstance(built.runner.attention_kernel, kind)
        assert built.runner.limits == limits and built.geometry.block_size == 4

    def missing(cache_dir: Path | None = None) -> Any:
        raise NativeUnavailable("no C compiler found (install gcc, or set CC)")

    monkeypatch.setattr(native, "load", missing)
    native_settings = EngineSettings(block_size=4, backend="batch", attention_kernel="native")
    with (
        pytest.raises(CommandError, match="--attention-kernel native: no C compiler"),
        command_errors(),
    ):
        assemble(native_settings, model, tokenizer, "tiny")
