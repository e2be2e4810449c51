"""The batch runner on the real default model (SmolLM2-135M-Instruct): requests served
together give the tokens they give alone, and an 8K-token prompt gives the same tokens
cached and uncached."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from prefixkv import NullCache
from prefixkv.bench import workloads
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.request import Completion, Request, SamplingParams
from tests.engine.conftest import with_own_cache

pytestmark = pytest.mark.smollm2


class Collect:
    """A Sink that keeps the Completion."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.completion: Completion | None = None
        self.outcome = ""
        self.error: BaseException | None = None

    @property
    def cancelled(self) -> bool:
        return False

    def deliver(self, item: str | Completion) -> None:
        if isinstance(item, Completion):
            self.completion = item

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        self.outcome, self.error = outcome, error
        self.done.set()


@pytest.fixture(scope="module")
def engines(smollm2_engine: Engine) -> tuple[Engine, Engine]:
    cached = with_own_cache(smollm2_engine, 512 << 20)
    return cached, cached.with_cache(NullCache(cached.layout, cached.cache.block_size))


def _serve(runner: BatchRunner, requests: list[Request]) -> list[Completion]:
    sinks = [Collect() for _ in requests]
    for request, sink in zip(requests, sinks, strict=True):
        runner.submit(request, sink)
    runner.start()
    try:
        for sink in sinks:
            assert sink.done.wait(600) and sink.outcome == "completed", sink.error
    finally:
        runner.stop()
    return [s.completion for s in sinks if s.completion is not None]


def _top2_gap(engine: Engine, request: Request, generated: tuple[int, ...]) -> float:
    """The serial engine's margin between its two best tokens where a flip happened."""
    ids = list(torch.frombuffer(bytearray(request.ids), dtype=torch.int32).tolist())
    logits = engine.next_token_logits(ids + list(generated)).logits
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def test_concurrent_requests_match_each_alone(engines: tuple[Engine, Engine]) -> None:
    cached, plain = engines
    prompts: list[Any] = [r.chat() for r in workloads.chat_workload(8)]
    prompts += [r.chat() for r in workloads.rag_workload(documents=2, questions=3, sentences=18)]
    prompts += [r.chat() for r in workloads.batch_workload(6)]
    params = SamplingParams(max_tokens=12)
    requests = [cached.request(p, params) for p in prompts]
    # Small steps force chunked prefill and mixed decode/prefill batches.
    runner = BatchRunner(cached, BatchLimits(max_running=8, max_batch_tokens=96))
    together = _serve(runner, requests)
    alone = [plain.generate(p, max_tokens=12) for p in prompts]
    flips = []
    for request, got, want in zip(requests, together, alone, strict=True):
        if got.token_ids != want.token_ids:
            at = next(
                i
                for i, (a, b) in enumerate(zip(got.token_ids, want.token_ids, strict=False))
                if a != b
            )
            flips.append((at, _top2_gap(plain, request, want.token_ids[:at])))
    assert len(prompts) >= 20
    assert len(flips) <= len(prompts) // 100, f"flips (position, top-2 logit gap): {flips}"
    assert sum(c.cached_tokens > 0 for c in together) >= len(prompts) // 2
    assert cached.cache.stats().pinned_blocks == 0
    cached.cache.check_invariants()


@pytest.mark.slow
def test_an_8k_prompt_is_token_identical_cached_and_uncached(
    engines: tuple[Engine, Engine],
) -> None:
    cached, _ = engines
    text = " ".join(workloads.document(seed, sentences=55) for seed in range(40))
    ids = cached.tokenizer(text)["input_ids"][: cached.context_length - 16]
    params = SamplingParams(max_tokens=16)
    first, second = (
        _serve(BatchRunner(cached), [cached.request(ids, params)])[0] for _ in range(2)
    )
    assert len(ids) > 8000 and first.cached_tokens == 0
    assert second.cached_tokens >= len(ids) - 16
    assert second.token_ids == first.token_ids
    assert cached.cache.stats().pinned_blocks == 0
