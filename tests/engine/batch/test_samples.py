"""n samples of one prompt (:mod:`prefixkv.engine.samples`) on the tiny Llama: the batch
runner prefills the prompt once (its step reports count every token fed), whole or in
chunks, and so does the serial runner from the prompt the first sample cached; each sample
is what the same request seeded ``seed + i`` gives alone; greedy samples agree."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixkv.cache import Namespace
from prefixkv.engine.batch.records import StepReport
from prefixkv.engine.engine import Completion, Engine
from prefixkv.engine.request import SEED_MAX, SEED_MIN, InvalidRequestError, SamplingParams
from prefixkv.engine.samples import MAX_N, check_n, sample_seed, samples_of
from prefixkv.engine.serial import SerialRunner

from .test_runner import BLOCK, Sink, assert_clean, batch_engine, ids, runner_of, serial_engine

PROMPT = ids(11, 23)  # 5 full blocks of 4 and a partial one of 3


class Fed:
    """An ``on_step`` that sums the tokens each step fed to the model."""

    def __init__(self) -> None:
        self.tokens = 0

    def __call__(self, report: StepReport) -> None:
        self.tokens += report.tokens


def batch_fed(engine: Engine, requests: list[Any], **limits: Any) -> tuple[int, list[Completion]]:
    fed = Fed()
    runner = runner_of(engine, **limits)
    runner.on_step = fed
    completions = runner.run_all(requests)
    assert_clean(engine)
    return fed.tokens, completions


@pytest.mark.parametrize("chunk", [512, 8], ids=["whole", "chunked"])
def test_eight_samples_prefill_the_prompt_once(parts: tuple[Any, Any], chunk: int) -> None:
    """max_tokens 1: every token fed is a prompt token. The first sample prefills all of
    it; each other one recomputes only its partial last block (3 tokens here)."""
    engine = batch_engine(parts)
    request = engine.request(PROMPT, SamplingParams.create(max_tokens=1, temperature=1.0))
    fed, completions = batch_fed(engine, list(samples_of(request, 8)), max_batch_tokens=chunk)
    tail = len(PROMPT) - (len(PROMPT) - 1) // BLOCK * BLOCK
    assert fed == len(PROMPT) + 7 * tail
    assert [c.prompt_tokens for c in completions] == [len(PROMPT)] * 8
    # Eight requests that cannot share (a namespace each) feed the prompt eight times.
    apart = [
        engine.request(PROMPT, SamplingParams.create(max_tokens=1), namespace=Namespace(str(i)))
        for i in range(8)
    ]
    assert batch_fed(batch_engine(parts), apart)[0] == 8 * len(PROMPT)


def test_serial_runner_prefills_the_prompt_once(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    fed = Fed()
    runner = SerialRunner(engine, on_step=fed)
    request = engine.request(PROMPT, SamplingParams.create(max_tokens=1))
    for sample in samples_of(request, 8):  # one after another, as its thread runs them
        for _ in runner.steps(sample, Sink(), time.perf_counter()):
            pass
    tail = len(PROMPT) - (len(PROMPT) - 1) // BLOCK * BLOCK
    assert fed.tokens == len(PROMPT) + 7 * tail
    assert_clean(engine)


def test_each_sample_is_its_seed_alone_and_greedy_ones_agree(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    sampling: Any = {"max_tokens": 6, "temperature": 1.0, "ignore_eos": True}
    request = engine.request(PROMPT, SamplingParams.create(seed=7, **sampling))
    _, together = batch_fed(engine, list(samples_of(request, 4)))
    alone = serial_engine(parts)
    expected = [alone.generate(PROMPT, seed=7 + i, **sampling).token_ids for i in range(4)]
    assert [c.token_ids for c in together] == expected
    assert len(set(expected)) > 1
    greedy = engine.request(PROMPT, SamplingParams.create(max_tokens=6, ignore_eos=True))
    _, same = batch_fed(engine, list(samples_of(greedy, 5)))
    assert len({c.token_ids for c in same}) == 1


@given(st.integers(SEED_MIN, SEED_MAX), st.integers(0, MAX_N - 1))
def test_sample_seeds_stay_in_range_and_differ(seed: int, index: int) -> None:
    derived = sample_seed(seed, index)
    assert SEED_MIN <= derived <= SEED_MAX
    assert sample_seed(seed, 0) == seed
    assert index == 0 or derived != seed


@pytest.mark.parametrize("n", [0, MAX_N + 1, True, 2.0, "2", None])
def test_bad_n_is_refused_naming_it(n: object) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        check_n(n)
    assert raised.value.param == "n"
