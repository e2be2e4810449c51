"""``--weights``: the native linear kernel streams a GGUF's own Q8_0/Q4_0/Q4_1 blocks (or
bf16 where a checkpoint's values are bf16) with outputs identical to the fp32 path, bit for
bit; ``bf16`` rounds (not exact, still batch-invariant)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from prefixkv import Engine
from prefixkv.engine.batch.runner import BatchRunner
from prefixkv.engine.linear import formats_of, linear_kernel, streamed_bytes
from prefixkv.engine.native_linear import SplitLinearLayer
from prefixkv.engine.request import SamplingParams
from prefixkv.engine.weights import weight_format
from prefixkv.kernels import formats

from .tiny_gguf import write_tiny_gguf

PROMPTS = ["hello world", "the quick brown fox", "user assistant hello", "lazy dog jumps"]


def _engine(tmp: Path, name: str, weights: str, linear_kernel: str = "auto", **kw: Any) -> Engine:
    """The tiny GGUF ``name`` (written with ``kw`` on first use) under ``weights``."""
    path = tmp / f"{name}.gguf"
    if not path.exists():
        write_tiny_gguf(path, **kw)
    return Engine.from_pretrained(
        str(path),
        cache_bytes=1 << 20,
        block_size=4,
        cache_dir=tmp / "cache",
        weights=weights,
        linear_kernel=linear_kernel,
    )


def _bits(engine: Engine, prompt: str) -> torch.Tensor:
    ids = engine.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        logits: torch.Tensor = engine.model(ids).logits
    return logits.view(torch.int32)


def _replies(engine: Engine) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy replies alone (serial runner) and batched together (batch runner)."""
    params = SamplingParams(max_tokens=12, temperature=0)
    alone = [list(engine.generate(p, max_tokens=12, temperature=0).token_ids) for p in PROMPTS]
    batch = BatchRunner(engine).run_all([engine.request(p, params) for p in PROMPTS])
    return alone, [list(done.token_ids) for done in batch]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_0", "Q4_1"])
def test_the_files_blocks_are_streamed_and_outputs_equal_fp32_bit_for_bit(
    arch: str, ggml_type: str, tmp_path: Path
) -> None:
    kept = _engine(tmp_path, arch, "auto", arch=arch, matrix_type=ggml_type)
    plain = _engine(tmp_path, arch, "fp32")
    # q/k/v and gate/up joined: 4 layers a block, and the head (the embedding's blocks).
    assert formats_of(kept.model) == f"{ggml_type.lower()} 9"
    assert formats_of(plain.model) == "f32 9"
    assert streamed_bytes(kept.model) < streamed_bytes(plain.model) / 3
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt
    alone, batched = _replies(kept)
    assert alone == batched == _replies(plain)[0]


def test_a_bf16_file_is_streamed_as_bf16_exactly(tmp_path: Path) -> None:
    kept = _engine(tmp_path, "bf16", "auto", matrix_type="BF16")
    plain = _engine(tmp_path, "bf16", "fp32")
    assert formats_of(kept.model) == "bf16 9"
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt


def test_siblings_in_different_formats_keep_their_blocks_side_by_side(tmp_path: Path) -> None:
    types = {"blk.0.attn_v.weight": "Q8_0"}  # q and k are Q4_1: layer 0's q/k/v differ
    kept = _engine(tmp_path, "mixed", "auto", matrix_type="Q4_1", types=types)
    plain = _engine(tmp_path, "mixed", "fp32")
    # layer 0's q/k/v: q and k joined in Q4_1, v alone in Q8_0 (a SplitLinearLayer)
    assert formats_of(kept.model) == "q4_1 9, q8_0 1"
    assert isinstance(kept.model.model.layers[0].self_attn.joined_q_proj.joined,
                      SplitLinearLayer)  # fmt: skip
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt
    alone, batched = _replies(kept)
    assert alone == batched == _replies(plain)[0]


def test_a_packing_that_differs_from_ggufs_dequantization_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = formats.pack_gguf

    def corrupted(format: str, rows: Any, in_features: int) -> formats.PackedWeight:
        packed = real(format, rows, in_features)
        packed.data[0, 4 * formats.BLOCK] ^= 1  # a bit of column 0's first quant (after d[64])
        return packed

    monkeypatch.setattr("prefixkv.engine.weights.pack_gguf", corrupted)
    with caplog.at_level(logging.WARNING, logger="prefixkv.engine"):
        kept = _engine(tmp_path, "bad", "auto", matrix_type="Q8_0")
    assert "q8_0" not in formats_of(kept.model)  # every packing refused, none served
    assert any("differs from gguf's de-quantization" in r.getMessage() for r in caplog.records)
    plain = _engine(tmp_path, "bad", "fp32")
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt


def test_bf16_rounds_every_layer_and_stays_batch_invariant(tmp_path: Path) -> None:
    rounded = _engine(tmp_path, "round", "bf16", matrix_type="Q8_0")
    plain = _engine(tmp_path, "round", "fp32")
    assert formats_of(rounded.model) == "bf16 9"
    logits = _bits(rounded, PROMPTS[0]).view(torch.float32)
    assert torch.allclose(logits, _bits(plain, PROMPTS[0]).view(torch.float32), atol=1e-2)
    alone, batched = _replies(rounded)
    assert alone == batched


def test_bf16_needs_the_native_kernel_and_unknown_names_are_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    with pytest.raises(ValueError, match="needs the native linear kernel, not torch"):
        linear_kernel("torch", model, weight_format("bf16", {}, model))
    with pytest.raises(ValueError, match="unknown weights 'fp8'"):
        weight_format("fp8", {}, model)
