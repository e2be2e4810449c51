"""``--activations q8`` on a model opened from a GGUF file: its Q8_0/Q4_0/Q4_1 and K-quant
(Q4_K/Q5_K/Q6_K) layers run on integer dot products; cached == uncached, batched == alone and the lean pass == transformers'
modules, bit for bit, as for fp32 activations; the replies stay close to fp32's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from prefixkv import Engine
from prefixkv.engine.activations import activations
from prefixkv.engine.batch.runner import BatchRunner
from prefixkv.engine.linear import formats_of, linear_kernel, streamed_bytes
from prefixkv.engine.native_linear import float_activations
from prefixkv.engine.request import SamplingParams
from prefixkv.engine.weights import weight_format
from tests.engine.batch.test_lean import _compared
from tests.engine.batch.test_runner import Sink, drive

from .tiny_gguf import write_tiny_gguf

PROMPTS = ["hello world", "the quick brown fox", "user assistant hello", "lazy dog jumps"]
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")  # need in features % 256 == 0: a wider tiny model


def _engine(tmp: Path, name: str, acts: str, **kw: Any) -> Engine:
    """The tiny GGUF ``name`` (written with ``kw`` on first use), ``--weights auto``."""
    path = tmp / f"{name}.gguf"
    if not path.exists():
        wide = kw.get("matrix_type") in K_TYPES
        write_tiny_gguf(path, **kw, **({"hidden": 256} if wide else {}))
    return Engine.from_pretrained(str(path), cache_bytes=1 << 20, block_size=4,
                                  cache_dir=tmp / "cache", activations=acts)  # fmt: skip


def _logits(engine: Engine, prompt: str) -> torch.Tensor:
    ids = engine.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        logits: torch.Tensor = engine.model(ids).logits
    return logits


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int32)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_0", "Q4_1", *K_TYPES])
def test_q8_activations_are_batch_invariant_and_cache_exact(
    arch: str, ggml_type: str, tmp_path: Path
) -> None:
    q8 = _engine(tmp_path, arch, "q8", arch=arch, matrix_type=ggml_type)
    fp32 = _engine(tmp_path, arch, "fp32")
    assert formats_of(q8.model) == f"{ggml_type.lower()}.q8 9"
    assert streamed_bytes(q8.model) == streamed_bytes(fp32.model)  # the same bytes, reordered
    for prompt in PROMPTS:
        got, want = _logits(q8, prompt), _logits(fp32, prompt)
        assert not torch.equal(got, want)  # the activations are rounded: another result
        torch.testing.assert_close(got, want, rtol=0, atol=0.05 * want.abs().max().item())
    params = SamplingParams(max_tokens=12, temperature=0)
    alone = [list(q8.generate(p, max_tokens=12, temperature=0).token_ids) for p in PROMPTS]
    cached = [list(q8.generate(p, max_tokens=12, temperature=0).token_ids) for p in PROMPTS]
    batched = BatchRunner(q8).run_all([q8.request(p, params) for p in PROMPTS])
    assert alone == cached == [list(done.token_ids) for done in batched]


@pytest.mark.parametrize("ggml_type", ["Q4_0", *K_TYPES])
def test_the_decoder_and_lean_passes_equal_transformers_on_q8_activations(
    ggml_type: str, tmp_path: Path
) -> None:
    """test_lean's comparison (logits and KV, every step, mixed prefill and decode): the
    decoder pass (csrc/decoder.c), the lean pass and transformers' modules."""
    engine = _engine(tmp_path, "lean", "q8", matrix_type=ggml_type)
    assert formats_of(engine.model) == f"{ggml_type.lower()}.q8 9"
    prompts = [engine.tokenizer(p).input_ids for p in PROMPTS]
    engine.generate(prompts[0], max_tokens=1)  # a cached prefix
    runner, compared = _compared(engine, max_running=4, max_batch_tokens=7)
    sinks = []
    for prompt in prompts:
        sinks.append(Sink())
        runner.submit(engine.request(prompt, SamplingParams.create(max_tokens=6)), sinks[-1])
    drive(runner)
    assert all(sink.outcome == "completed" for sink in sinks)
    assert compared.steps >= 6 and compared.mixed


def test_q8_activations_need_the_native_kernel_and_unknown_names_are_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    with pytest.raises(ValueError, match="--activations q8 needs the native linear kernel"):
        linear_kernel("torch", model, weight_format("fp32", {}, model), activations("q8"))
    with pytest.raises(ValueError, match="unknown activations 'int4'"):
        activations("int4")


def test_layers_without_integer_blocks_keep_float32_activations(tmp_path: Path) -> None:
    """A bf16 file: nothing to run on integer dots, so q8 computes what fp32 does."""
    q8 = _engine(tmp_path, "bf16", "q8", matrix_type="BF16")
    fp32 = _engine(tmp_path, "bf16", "fp32")
    assert formats_of(q8.model) == "bf16 9"
    assert torch.equal(_bits(_logits(q8, PROMPTS[0])), _bits(_logits(fp32, PROMPTS[0])))


@pytest.mark.parametrize("ggml_type", ["Q4_1", "Q5_K"])
def test_the_batch_runners_probe_computes_on_float32_activations(
    ggml_type: str, tmp_path: Path
) -> None:
    """Within float_activations every integer-dot layer computes what the fp32 activations'
    engine does (bit for bit), and after it the 8-bit results again."""
    q8 = _engine(tmp_path, "probe", "q8", matrix_type=ggml_type)
    fp32 = _engine(tmp_path, "probe", "fp32")
    rounded = _logits(q8, PROMPTS[1])
    with float_activations(q8.model):
        assert torch.equal(_bits(_logits(q8, PROMPTS[1])), _bits(_logits(fp32, PROMPTS[1])))
    assert torch.equal(_bits(_logits(q8, PROMPTS[1])), _bits(rounded))
