"""The lean model pass (engine/batch/lean.py) and the decoder pass over it
(engine/batch/decoder.py): the decoder pass is chosen where it covers the model, and on every
step (prefill chunks beside decoding sequences, shared and cached prefixes, several batch
compositions) its logits and the KV it writes are bit-identical to the lean pass's and to
transformers' modules' on the same step, for a tiny model of each covered family and for
SmolLM2."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from prefixkv.engine.batch.decoder import DecoderPass
from prefixkv.engine.batch.lean import LeanPass, NotCovered
from prefixkv.engine.batch.passes import ModelPass, TransformersPass
from prefixkv.engine.batch.records import BatchLimits
from prefixkv.engine.batch.runner import BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.native_linear import SplitLinearLayer
from prefixkv.engine.request import SamplingParams
from tests.engine.conftest import one_thread, with_own_cache
from tests.engine.kernel_matrix import on_linear_kernel
from tests.engine.tiny import tiny_llama, tiny_tokenizer
from tests.models.tiny_families import LLAMA_LIKE, tiny_model

from .test_runner import PROMPTS, Sink, assert_clean, batch_engine, drive, ids


class Compared:
    """A model pass that runs its first pass, then each of the others on the same step (each
    writes the same slots again), and fails on any difference in logits or pool."""

    def __init__(self, first: ModelPass, *references: ModelPass) -> None:
        self.first, self.references = first, references
        self.steps = self.mixed = 0

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, pool: torch.Tensor,
                 step: Any, keep: torch.Tensor) -> torch.Tensor:  # fmt: skip
        got = self.first(input_ids, positions, pool, step, keep)
        written = pool.clone()
        for reference in self.references:
            want = reference(input_ids, positions, pool, step, keep)
            assert same_bits(got, want), f"step {self.steps}: {reference.name}'s logits differ"
            assert same_bits(pool, written), f"step {self.steps}: {reference.name}'s KV differs"
        self.steps += 1
        prefill = any(span.count > 1 for span in step.planned)
        self.mixed += prefill and any(span.count == 1 for span in step.planned)
        return got


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit: NaN equals NaN of the same bits (the pool's unwritten slots hold whatever
    memory held), -0.0 differs from 0.0."""
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _mistral() -> Any:
    from transformers import MistralConfig

    return tiny_model(MistralConfig(**LLAMA_LIKE, sliding_window=None))


def _qwen2() -> Any:
    from transformers import Qwen2Config

    return tiny_model(Qwen2Config(**LLAMA_LIKE))  # biased q/k/v


FAMILIES = {"llama": lambda: tiny_llama(), "mistral": _mistral, "qwen2": _qwen2}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def native_parts(request: pytest.FixtureRequest) -> Any:
    with one_thread():
        yield on_linear_kernel(FAMILIES[request.param](), "native"), tiny_tokenizer()


def _compared(engine: Engine, **limits: Any) -> tuple[BatchRunner, Compared]:
    runner = BatchRunner(engine, BatchLimits(**limits), attention_kernel="native")
    decoder = runner.model_pass
    assert isinstance(decoder, DecoderPass), "the decoder pass must cover this model"
    assert isinstance(decoder.lean, LeanPass)
    compared = Compared(decoder, decoder.lean, TransformersPass(engine.model, engine.model_lock))
    runner.model_pass = compared
    return runner, compared


@pytest.mark.parametrize(
    ("running", "tokens"), [(8, 64), (3, 7), (1, 5)], ids=["wide", "chunked", "alone"]
)
def test_decoder_and_lean_steps_equal_transformers_bit_for_bit(
    native_parts: tuple[Any, Any], running: int, tokens: int
) -> None:
    engine = batch_engine(native_parts)
    engine.generate(PROMPTS[0][:12] + ids(9, 3), max_tokens=1)  # a cached prefix
    runner, compared = _compared(engine, max_running=running, max_batch_tokens=tokens)
    sinks = []
    for prompt in [*PROMPTS, ids(7, 30)]:
        sinks.append(Sink())
        runner.submit(engine.request(prompt, SamplingParams.create(max_tokens=6)), sinks[-1])
    drive(runner)
    assert all(sink.outcome == "completed" for sink in sinks)
    assert compared.steps >= 6  # six tokens each: six sampling steps at least
    if running > 1:
        assert compared.mixed, "no step mixed prefill chunks with decoding sequences"
    assert_clean(engine)


def test_what_the_lean_pass_does_not_cover_keeps_transformers(
    native_parts: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    engine = batch_engine(native_parts)
    with caplog.at_level("INFO", logger="prefixkv.engine"):
        torch_attention = BatchRunner(engine, BatchLimits(), attention_kernel="torch")
    assert isinstance(torch_attention.model_pass, TransformersPass)
    assert "the attention kernel is 'torch'" in caplog.text
    plain = batch_engine((tiny_llama(), tiny_tokenizer()))  # PyTorch's own linear layers
    assert isinstance(BatchRunner(plain, BatchLimits()).model_pass, TransformersPass)


def test_a_projection_split_by_format_keeps_the_lean_pass(native_parts: tuple[Any, Any]) -> None:
    """A joined projection whose parts keep different formats (some K-quant files) is a
    SplitLinearLayer: the decoder pass does not cover it, the lean pass still does."""
    engine = batch_engine(native_parts)
    decoder = BatchRunner(engine, BatchLimits(), attention_kernel="native").model_pass
    assert isinstance(decoder, DecoderPass)
    lean, first = decoder.lean, decoder.lean.layers[0]
    split = SplitLinearLayer([first.modules[0]])  # type: ignore[list-item]
    layers = (dataclasses.replace(first, modules=(split, *first.modules[1:])), *lean.layers[1:])
    with pytest.raises(NotCovered, match="q/k/v is SplitLinearLayer"):
        DecoderPass.of(dataclasses.replace(lean, layers=layers))


def test_a_windowed_model_keeps_transformers() -> None:
    from transformers import MistralConfig

    model = on_linear_kernel(tiny_model(MistralConfig(**LLAMA_LIKE, sliding_window=8)), "native")
    engine = batch_engine((model, tiny_tokenizer()))
    assert isinstance(BatchRunner(engine, BatchLimits()).model_pass, TransformersPass)


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_decoder_and_lean_steps_equal_transformers(smollm2_engine: Engine) -> None:
    engine = with_own_cache(smollm2_engine, 1 << 28)  # --weights auto
    runner, compared = _compared(engine, max_running=4, max_batch_tokens=48)
    sinks = []
    for i, question in enumerate(["What is 2+2?", "Name a colour.", "Say hi."]):
        messages = [{"role": "user", "content": f"{i} {question}"}]
        sinks.append(Sink())
        runner.submit(engine.request(messages, SamplingParams.create(max_tokens=5)), sinks[-1])
    drive(runner)
    assert all(sink.outcome == "completed" for sink in sinks)
    assert compared.steps >= 5 and compared.mixed
