"""The exactness canary on a tiny random Llama: clean runs never raise a false alarm (on
every linear kernel the engine can choose), a corrupted pool block is caught, named and
dropped, and the next request is served as if it had never been cached."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from prefixkv.engine.batch.canary import NO_CANARY, SampledCanary, first_mismatch
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.batch.sequence import UNINDEXED
from prefixkv.engine.engine import Engine

from ...engine.tiny import tiny_tokenizer
from ..kernel_matrix import kernel_llama, kernel_runner
from .test_runner import PROMPTS, alone_ids, assert_clean, batch_engine, ids, submit

EXACT_LINEAR = ("auto", "native", "onednn")
"""The linear kernels whose every output is one summation order whatever the row count."""
EXACT_ATTENTION = ("auto", "native")
"""The same for attention (see the torch tests below)."""


@pytest.fixture(scope="module")
def native() -> tuple[Any, Any]:
    return kernel_llama("native"), tiny_tokenizer()


def names(tokens: Any, namespace: Any, count: int) -> list[str]:
    return [f"block-{i}" for i in range(count)]


def runner_with(engine: Engine, canary: Any, **limits: Any) -> BatchRunner:
    return BatchRunner(engine, BatchLimits(**limits), canary=canary)


def drive_all(runner: BatchRunner, limit: int = 5000) -> None:
    """Step until nothing runs, waits, or waits to be checked."""
    steps = 0
    while runner.num_running or runner.num_waiting or runner.canary.busy:
        runner.step()
        steps += 1
        assert steps < limit, "the runner makes no progress"


def clean_run(parts: tuple[Any, Any], attention: str) -> SampledCanary:
    """Every PROMPT twice (the second round served from the cache) with every served prefix
    checked, in chunked, mixed steps; the replies as the serial engine's."""
    engine = batch_engine(parts)
    canary = SampledCanary(1.0, names, max_pending=8)
    runner = kernel_runner(engine, attention, BatchLimits(max_batch_tokens=7))
    runner.canary = canary
    for _ in range(2):
        sinks = [submit(engine, runner, p, max_tokens=6) for p in PROMPTS]
        drive_all(runner)
        for prompt, sink in zip(PROMPTS, sinks, strict=True):
            assert sink.completion.token_ids == alone_ids(parts, prompt, 6)
    assert_clean(engine)
    return canary


@pytest.mark.parametrize("attention", EXACT_ATTENTION)
@pytest.mark.parametrize("linear", EXACT_LINEAR)
def test_clean_runs_raise_no_alarm(linear: str, attention: str) -> None:
    canary = clean_run((kernel_llama(linear), tiny_tokenizer()), attention)
    counts = canary.counts()
    assert counts.checks >= 4 and counts.mismatches == 0 and counts.discarded_blocks == 0
    assert counts.recomputed_tokens >= 4 * 4


def test_the_torch_linear_kernel_is_not_bit_exact_across_batches() -> None:
    """Why ``prefixkv serve`` turns the canary off on ``--linear-kernel torch``: MKL's GEMM
    rounds a row differently with the call's row count, so a prefix computed alone differs
    from the same tokens computed in another batch in its last bits (the replies above still
    agree: the tiny model's logits are far from ties). The canary sees it."""
    canary = clean_run((kernel_llama("torch"), tiny_tokenizer()), "auto")
    assert canary.counts().mismatches > 0


def test_the_torch_attention_kernel_is_not_bit_exact_across_batches() -> None:
    """Likewise for PyTorch's attention ops over the pool: the canary runs only where the
    runner's attention kernel is the native one."""
    canary = clean_run((kernel_llama("native"), tiny_tokenizer()), "torch")
    assert canary.counts().mismatches > 0


def test_a_corrupted_block_is_caught_and_the_next_request_served_right(
    native: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    engine = batch_engine(native)
    canary = SampledCanary(1.0, names)
    runner = runner_with(engine, canary)
    prompt = ids(11, 30)
    expected = alone_ids(native, prompt, 8)
    first = submit(engine, runner, prompt, max_tokens=8)
    drive_all(runner)
    assert first.completion.token_ids == expected

    held = engine.cache.hold(engine.request(prompt).ids, None)
    bad = held.blocks[3]  # tokens 12-15 of the prompt
    engine.cache.close(held)
    pool = engine.cache.pool
    assert pool is not None
    pool.data[1, 0, 0, bad, 2, 0] += 1.0  # layer 1, keys, head 0, token 14

    with caplog.at_level("ERROR", logger="prefixkv.canary"):
        served = submit(engine, runner, prompt, max_tokens=8)  # from the corrupted cache
        drive_all(runner)
    assert served.completion.cached_tokens == 28
    counts = canary.counts()
    assert (counts.checks, counts.mismatches) == (1, 1)
    # Block 3 and every block after it: the prompt's 7 full blocks, then the served reply's
    # (30 prompt tokens + 7 fed generated ones: 9 blocks), all extending the bad one.
    assert counts.discarded_blocks == 9 - 3
    (record,) = [r for r in caplog.records if r.name == "prefixkv.canary"]
    assert "block 3 (layer 1, token 14)" in record.getMessage()
    assert "block-0, block-1" in record.getMessage()

    again = submit(engine, runner, prompt, max_tokens=8)
    drive_all(runner)
    assert again.completion.cached_tokens == 12  # blocks 0-2 kept: they were right
    assert again.completion.token_ids == expected
    assert canary.counts().mismatches == 1  # the blocks computed afresh are right
    assert_clean(engine)


def test_a_check_with_no_room_in_time_is_skipped_and_unpinned(native: tuple[Any, Any]) -> None:
    engine = batch_engine(native)
    canary = SampledCanary(1.0, names, max_wait=0.0)
    runner = runner_with(engine, canary)
    prompt = ids(12, 20)
    for _ in range(2):
        submit(engine, runner, prompt, max_tokens=2)
        drive_all(runner)
    assert canary.counts()._replace(discarded_blocks=0) == (0, 0, 1, 0, 0)
    assert not canary.busy
    assert_clean(engine)


def test_no_canary_checks_nothing(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    runner = runner_with(engine, NO_CANARY)
    for _ in range(2):
        submit(engine, runner, PROMPTS[0], max_tokens=2)
        drive_all(runner)
    assert runner.canary.counts().checks == 0 and not runner.canary.busy


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan")])
def test_a_rate_outside_zero_one_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="canary rate"):
        SampledCanary(rate, names)


def test_first_mismatch_names_the_first_block_layer_and_token() -> None:
    data = torch.zeros(3, 2, 2, 6, 4, 5)  # [layers, 2, heads, blocks, block_size, head_dim]
    assert first_mismatch(data, [0, 1], [2, 3]) is None
    data[2, 1, 1, 3, 3, 4] = 1e-30  # a last-bit difference, late in the second block
    data[1, 0, 0, 3, 1, 0] = -0.0  # -0.0 == 0.0 as floats, not as bits
    found = first_mismatch(data, [0, 1], [2, 3])
    assert found is not None and (found.block, found.layer, found.position) == (1, 1, 5)


def test_a_preempted_check_resumes_and_still_compares(native: tuple[Any, Any]) -> None:
    """A check preempted for room resumes on a new table; the comparison reads that one (it
    read the closed first table once, and failed the whole step)."""
    engine = batch_engine(native)
    canary = SampledCanary(1.0, names)
    runner = runner_with(engine, canary, max_batch_tokens=4)  # the check takes several steps
    prompt = ids(13, 24)
    submit(engine, runner, prompt, max_tokens=2)
    drive_all(runner)
    submit(engine, runner, prompt, max_tokens=2)  # served from the cache: sampled
    while not any(s.caching is UNINDEXED for s in runner._running):
        runner.step()
    (check,) = [s for s in runner._running if s.caching is UNINDEXED]
    runner._preempt(check)
    drive_all(runner)
    assert canary.counts()._replace(recomputed_tokens=0) == (1, 0, 0, 0, 0)
    assert_clean(engine)
