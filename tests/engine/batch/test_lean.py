"""The lean model pass (engine/batch/lean.py): chosen where it covers the model, and on every
step (prefill chunks beside decoding sequences, shared and cached prefixes, several batch
compositions) its logits and the KV it writes are bit-identical to transformers' modules'
on the same step, for a tiny model of each covered family and for SmolLM2."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from prefixkv.engine.batch.lean import LeanPass
from prefixkv.engine.batch.passes import ModelPass, TransformersPass
from prefixkv.engine.batch.records import BatchLimits
from prefixkv.engine.batch.runner import BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.request import SamplingParams
from tests.engine.conftest import one_thread, with_own_cache
from tests.engine.kernel_matrix import on_linear_kernel
from tests.engine.tiny import tiny_llama, tiny_tokenizer
from tests.models.tiny_families import LLAMA_LIKE, tiny_model

from .test_runner import PROMPTS, Sink, assert_clean, batch_engine, drive, ids


class Compared:
    """A model pass that runs the lean pass, then transformers' on the same step (which
    writes the same slots again), and fails on any difference in logits or pool."""

    def __init__(self, lean: ModelPass, reference: ModelPass) -> None:
        self.lean, self.reference = lean, reference
        self.steps = self.mixed = 0

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, pool: torch.Tensor,
                 step: Any, keep: torch.Tensor) -> torch.Tensor:  # fmt: skip
        got = self.lean(input_ids, positions, pool, step, keep)
        written = pool.clone()
        want = self.reference(input_ids, positions, pool, step, keep)
        assert same_bits(got, want), f"step {self.steps}: logits differ"
        assert same_bits(pool, written), f"step {self.steps}: KV differs"
        self.steps += 1
        prefill = any(span.count > 1 for span in step.planned)
        self.mixed += prefill and any(span.count == 1 for span in step.planned)
        return want


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
    lean = runner.model_pass
    assert isinstance(lean, LeanPass), "the lean pass must cover this model"
    compared = Compared(lean, TransformersPass(engine.model, engine.model_lock))
    runner.model_pass = compared
    return runner, compared


@pytest.mark.parametrize(
    ("running", "tokens"), [(8, 64), (3, 7), (1, 5)], ids=["wide", "chunked", "alone"]
)
def test_lean_steps_equal_transformers_bit_for_bit(
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


def test_a_windowed_model_keeps_transformers() -> None:
    from transformers import MistralConfig

    model = on_linear_kernel(tiny_model(MistralConfig(**LLAMA_LIKE, sliding_window=8)), "native")
    engine = batch_engine((model, tiny_tokenizer()))
    assert isinstance(BatchRunner(engine, BatchLimits()).model_pass, TransformersPass)


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_lean_steps_equal_transformers(smollm2_engine: Engine) -> None:
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
