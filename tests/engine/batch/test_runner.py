"""BatchRunner on a tiny random Llama: every request gets exactly what it gets alone.

The runner is driven step by step (``runner.step()``, no thread) wherever the order of
events matters; the failure test runs its thread, since that is where a failed step is
handled.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
import torch

from prefixkv.cache import Namespace, NullCache, PrefixKVCache
from prefixkv.engine.batch.policy import FCFS, LPM
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.batch.sequence import Outcome, RequestCancelled
from prefixkv.engine.engine import Completion, Engine
from prefixkv.engine.kvbridge import layout_of
from prefixkv.engine.request import InvalidRequestError, SamplingParams

from ..kernel_matrix import ATTENTION_KERNELS, LINEAR_KERNELS, kernel_llama, kernel_runner

BLOCK = 4


class Sink:
    """Collects what the runner reports; ``cancel_after`` deliveries it turns cancelled."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.items: list[str | Completion] = []
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.cancel_after = cancel_after
        self.done = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.items) >= self.cancel_after

    def deliver(self, item: str | Completion) -> None:
        assert self.outcome is None, "delivered after finish"
        self.items.append(item)

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        assert self.outcome is None, "finished twice"
        self.outcome, self.error = outcome, error
        self.done.set()

    @property
    def completion(self) -> Completion:
        last = self.items[-1]
        assert isinstance(last, Completion) and self.outcome == "completed"
        return last

    @property
    def text(self) -> str:
        return "".join(i for i in self.items if isinstance(i, str))


def layout(parts: tuple[Any, Any]) -> Any:
    return layout_of(parts[0].config, torch.float32)


def batch_engine(parts: tuple[Any, Any], blocks: int = 256) -> Engine:
    lay = layout(parts)
    return Engine(parts[0], parts[1], PrefixKVCache(lay, BLOCK, lay.block_bytes(BLOCK) * blocks))


def serial_engine(parts: tuple[Any, Any]) -> Engine:
    return Engine(parts[0], parts[1], NullCache(layout(parts), BLOCK))


def runner_of(engine: Engine, kernel: str = "auto", **limits: Any) -> BatchRunner:
    return BatchRunner(engine, BatchLimits(**limits), attention_kernel=kernel)


def drive(runner: BatchRunner, limit: int = 5000) -> int:
    """Step until nothing runs or waits; return the steps taken."""
    steps = 0
    while runner.num_running or runner.num_waiting:
        runner.step()
        steps += 1
        assert steps < limit, "the runner makes no progress"
    return steps


def submit(engine: Engine, runner: BatchRunner, prompt: list[int], **sampling: Any) -> Sink:
    sink = Sink()
    runner.submit(engine.request(prompt, SamplingParams.create(**sampling)), sink)
    return sink


def ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, 80) for _ in range(n)]


def assert_clean(engine: Engine) -> None:
    stats = engine.cache.stats()
    assert stats.pinned_blocks == 0
    assert stats.free_blocks + stats.used_blocks == stats.total_blocks
    engine.cache.check_invariants()


SHARED = ids(1, 14)
PROMPTS = [
    SHARED + ids(2, 5),
    SHARED + ids(3, 9),
    SHARED[:9] + ids(4, 3),
    ids(5, 11),
    [*SHARED, 7],
    SHARED[:6],
    [9],
]
_serial: dict[tuple[Any, ...], tuple[int, ...]] = {}  # keyed by the model too: one per kernel


def alone(parts: tuple[Any, Any], prompt: list[int], **sampling: Any) -> Completion:
    return serial_engine(parts).generate(prompt, **sampling)


def alone_ids(parts: tuple[Any, Any], prompt: list[int], max_tokens: int) -> tuple[int, ...]:
    key = (parts[0], tuple(prompt), max_tokens)
    if key not in _serial:
        _serial[key] = alone(parts, prompt, max_tokens=max_tokens).token_ids
    return _serial[key]


# --- (a) one request -----------------------------------------------------------------------


def test_one_request_matches_the_serial_engine_and_the_uncached_one(
    parts: tuple[Any, Any],
) -> None:
    prompt = SHARED + ids(6, 7)
    engine = batch_engine(parts)
    runner = runner_of(engine)
    sink = submit(engine, runner, prompt, max_tokens=10)
    drive(runner)
    got = sink.completion
    cached_serial = batch_engine(parts).generate(prompt, max_tokens=10)
    uncached = alone(parts, prompt, max_tokens=10)
    assert got.token_ids == cached_serial.token_ids == uncached.token_ids
    assert got.text == uncached.text == sink.text
    assert (got.prompt_tokens, got.finish_reason) == (len(prompt), uncached.finish_reason)
    assert_clean(engine)
    # Its blocks stay indexed: the same prompt again is served from the cache, identically.
    again = submit(engine, runner, prompt, max_tokens=10)
    drive(runner)
    assert again.completion.cached_tokens == (len(prompt) - 1) // BLOCK * BLOCK
    assert again.completion.token_ids == uncached.token_ids
    assert_clean(engine)


def test_one_request_over_a_null_cache_pool(parts: tuple[Any, Any]) -> None:
    lay = layout(parts)
    cache = NullCache(lay, BLOCK, capacity_bytes=lay.block_bytes(BLOCK) * 32)
    engine = Engine(parts[0], parts[1], cache)
    runner = runner_of(engine, max_batch_tokens=5)
    sinks = [submit(engine, runner, p, max_tokens=6) for p in PROMPTS[:3]]
    drive(runner)
    for prompt, sink in zip(PROMPTS, sinks, strict=False):
        assert sink.completion.token_ids == alone_ids(parts, prompt, 6)
        assert sink.completion.cached_tokens == 0
    assert cache.stats().free_blocks == 32


def test_a_cache_without_a_pool_is_refused(parts: tuple[Any, Any]) -> None:
    with pytest.raises(TypeError, match="pool"):
        BatchRunner(serial_engine(parts))


# --- (b) many requests at once -----------------------------------------------------------


@pytest.mark.parametrize("attention", ATTENTION_KERNELS)
@pytest.mark.parametrize(
    ("max_batch_tokens", "max_running"), [(1, 8), (2, 3), (3, 1), (5, 8), (8, 2), (64, 8)]
)
def test_concurrent_requests_each_match_running_alone(
    kernel_parts: tuple[Any, Any], max_batch_tokens: int, max_running: int, attention: str
) -> None:
    """On every pair of linear and attention kernels the engine can choose: each request
    batched gets the tokens it gets alone on the serial engine over no cache, and so does
    each again once its prefix is cached."""
    engine = batch_engine(kernel_parts)
    limits = BatchLimits(max_running=max_running, max_batch_tokens=max_batch_tokens)
    runner = kernel_runner(engine, attention, limits)
    for attempt in ("cold", "cached"):
        sinks = [submit(engine, runner, p, max_tokens=6) for p in PROMPTS]
        drive(runner)
        for prompt, sink in zip(PROMPTS, sinks, strict=True):
            assert sink.completion.token_ids == alone_ids(kernel_parts, prompt, 6), prompt
            if attempt == "cached":  # every whole block but the last token's is reused
                assert sink.completion.cached_tokens == (len(prompt) - 1) // BLOCK * BLOCK
        assert runner.preemptions == 0
        assert_clean(engine)


def test_requests_arriving_while_others_run_reuse_their_blocks(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    runner = runner_of(engine, max_batch_tokens=4, max_running=4)
    first = submit(engine, runner, PROMPTS[1], max_tokens=6)
    for _ in range(5):  # 20 tokens fed: the shared 14 are indexed
        runner.step()
    second = submit(engine, runner, PROMPTS[0], max_tokens=6)
    drive(runner)
    assert second.completion.cached_tokens == len(SHARED) // BLOCK * BLOCK
    assert first.completion.token_ids == alone_ids(parts, PROMPTS[1], 6)
    assert second.completion.token_ids == alone_ids(parts, PROMPTS[0], 6)
    assert_clean(engine)


# --- (c) preemption ----------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["prefix", "null"])
@pytest.mark.parametrize("max_batch_tokens", [3, 16])
def test_a_pool_too_small_for_all_preempts_and_loses_nothing(
    parts: tuple[Any, Any], max_batch_tokens: int, cache: str
) -> None:
    # Short prompts, long answers: all are admitted, then their decodes outgrow the pool.
    prompts = [ids(20 + i, 6) for i in range(4)] + [SHARED[:6], SHARED[:7]]
    if cache == "prefix":
        engine = batch_engine(parts, blocks=10)  # each request needs up to 6 blocks
    else:
        lay = layout(parts)
        null = NullCache(lay, BLOCK, capacity_bytes=lay.block_bytes(BLOCK) * 10)
        engine = Engine(parts[0], parts[1], null)
    runner = runner_of(engine, max_batch_tokens=max_batch_tokens, max_running=8)
    sinks = [submit(engine, runner, p, max_tokens=18) for p in prompts]
    sampled = {"max_tokens": 18, "temperature": 0.9, "top_p": 0.95, "seed": 5}
    sinks.append(submit(engine, runner, prompts[0], **sampled))
    drive(runner)
    assert runner.preemptions > 0
    for prompt, sink in zip(prompts, sinks, strict=False):
        assert sink.outcome == "completed"
        assert sink.completion.token_ids == alone_ids(parts, prompt, 18)
        assert sink.text == sink.completion.text
    # A preempted sampling request resumes with its sampler where it was.
    assert sinks[-1].completion.token_ids == alone(parts, prompts[0], **sampled).token_ids
    assert_clean(engine)
    if cache == "null":
        assert engine.cache.stats().free_blocks == 10


def test_namespaces_do_not_share_blocks(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    runner = runner_of(engine, max_batch_tokens=64)
    prompt = PROMPTS[1]
    first = Sink()
    runner.submit(engine.request(prompt, SamplingParams(max_tokens=3), namespace="a"), first)
    drive(runner)
    same, other = Sink(), Sink()
    runner.submit(engine.request(prompt, SamplingParams(max_tokens=3), namespace="a"), same)
    runner.submit(engine.request(prompt, SamplingParams(max_tokens=3), namespace="b"), other)
    drive(runner)
    assert same.completion.cached_tokens == (len(prompt) - 1) // BLOCK * BLOCK
    assert other.completion.cached_tokens == 0
    assert first.completion.token_ids == same.completion.token_ids == other.completion.token_ids
    assert_clean(engine)


def test_requests_from_many_threads_on_the_running_thread(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts, blocks=24)
    runner = runner_of(engine, max_batch_tokens=6, max_running=3)
    reports: list[Any] = []
    runner.on_step = reports.append
    # The serial engine runs on the same model: its answers come first, not beside the runner.
    expected = [alone_ids(parts, prompt, 6) for prompt in PROMPTS]
    runner.start()
    sinks: dict[int, Sink] = {}

    def client(i: int) -> None:
        sinks[i] = submit(engine, runner, PROMPTS[i], max_tokens=6)

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for i, sink in sinks.items():
            assert sink.done.wait(30)
            assert sink.completion.token_ids == expected[i]
        assert runner.wait_idle(10)
    finally:
        runner.stop()
    assert reports and all(r.tokens <= 6 or r.tokens == r.sequences for r in reports)
    assert runner.steps == len(reports)
    assert_clean(engine)


# --- (d) sampling parameters per request -------------------------------------------------


def test_per_request_sampling_in_one_batch(parts: tuple[Any, Any]) -> None:
    greedy = alone(parts, PROMPTS[1], max_tokens=12)
    stop = greedy.text[3:5]
    assert stop and greedy.text.find(stop) >= 3
    requests: list[tuple[list[int], dict[str, Any]]] = [
        (PROMPTS[0], {"max_tokens": 9, "temperature": 0.8, "top_p": 0.9, "seed": 1}),
        (PROMPTS[1], {"max_tokens": 12, "stop": stop}),
        (PROMPTS[2], {"max_tokens": 3}),
        (PROMPTS[3], {"max_tokens": 7, "temperature": 1.3, "seed": 2}),
        (PROMPTS[0], {"max_tokens": 9, "temperature": 0.8, "top_p": 0.9, "seed": 3}),
        (PROMPTS[4], {"max_tokens": 1}),
    ]
    engine = batch_engine(parts)
    runner = runner_of(engine, max_batch_tokens=7, max_running=6)
    sinks = [submit(engine, runner, p, **s) for p, s in requests]
    drive(runner)
    for (prompt, sampling), sink in zip(requests, sinks, strict=True):
        expected = alone(parts, prompt, **sampling)
        got = sink.completion
        assert got.token_ids == expected.token_ids, sampling
        assert (got.text, got.finish_reason) == (expected.text, expected.finish_reason)
        assert sink.text == got.text
        assert len(got.token_ids) <= sampling["max_tokens"]
    stopped = sinks[1].completion
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    assert stopped.text == greedy.text[: greedy.text.find(stop)]
    assert len(sinks[2].completion.token_ids) == 3 and sinks[2].completion.finish_reason == "length"
    assert sinks[0].completion.token_ids != sinks[4].completion.token_ids  # seeds differ
    assert_clean(engine)


# --- (e) cancellation ---------------------------------------------------------------------


def test_a_cancelled_request_stops_and_unpins_while_others_go_on(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    runner = runner_of(engine, max_batch_tokens=8, max_running=4)
    keep = submit(engine, runner, PROMPTS[1], max_tokens=8)
    gone = Sink(cancel_after=2)  # gives up after two deliveries
    runner.submit(engine.request(PROMPTS[0], SamplingParams(max_tokens=20)), gone)
    queued = Sink(cancel_after=0)  # gives up before it runs
    runner.submit(engine.request(PROMPTS[3], SamplingParams(max_tokens=5)), queued)
    drive(runner)
    assert gone.outcome == "stopped" and isinstance(gone.error, RequestCancelled)
    assert not any(isinstance(i, Completion) for i in gone.items)
    assert queued.outcome == "skipped" and isinstance(queued.error, RequestCancelled)
    assert keep.completion.token_ids == alone_ids(parts, PROMPTS[1], 8)
    assert_clean(engine)


def test_cancelling_mid_run_releases_the_pins_at_once(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    runner = runner_of(engine, max_batch_tokens=64)
    sink = Sink()
    runner.submit(engine.request(PROMPTS[1], SamplingParams(max_tokens=30)), sink)
    for _ in range(4):
        runner.step()
    assert engine.cache.stats().pinned_blocks > 0
    sink.cancel_after = 0
    runner.step()
    assert sink.outcome == "stopped" and runner.num_running == 0
    assert_clean(engine)


# --- (f) a request the pool can never hold ------------------------------------------------


def test_submit_of_a_request_larger_than_the_pool_is_invalid(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts, blocks=6)
    runner = runner_of(engine)
    with pytest.raises(InvalidRequestError) as raised:
        runner.submit(engine.request(ids(7, 20), SamplingParams(max_tokens=5)), Sink())
    assert raised.value.code == "context_length_exceeded"
    assert runner.num_waiting == 0
    fits = submit(engine, runner, ids(7, 20), max_tokens=4)  # 24 tokens: 6 blocks
    drive(runner)
    assert fits.completion.token_ids == alone_ids(parts, ids(7, 20), 4)
    assert_clean(engine)


# --- (g) drain and stop -------------------------------------------------------------------


def test_drain_skips_the_waiting_and_finishes_the_running(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    runner = runner_of(engine, max_running=1)
    sinks = [submit(engine, runner, p, max_tokens=5) for p in PROMPTS[:3]]
    runner.step()
    runner.drain()
    assert [s.outcome for s in sinks[1:]] == ["skipped", "skipped"]
    assert all(isinstance(s.error, RequestCancelled) for s in sinks[1:])
    with pytest.raises(RequestCancelled):
        submit(engine, runner, PROMPTS[3], max_tokens=5)
    drive(runner)
    assert sinks[0].completion.token_ids == alone_ids(parts, PROMPTS[0], 5)
    assert_clean(engine)


def test_stop_skips_the_waiting_and_stops_the_running(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    runner = runner_of(engine, max_running=1)
    running, waiting = (submit(engine, runner, p, max_tokens=20) for p in PROMPTS[:2])
    runner.step()
    runner.stop()
    assert waiting.outcome == "skipped"
    runner.step()
    assert running.outcome == "stopped"
    assert (runner.num_running, runner.num_waiting) == (0, 0)
    assert_clean(engine)


def test_stop_ends_the_runner_thread(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    runner = runner_of(engine)
    runner.start()
    sink = submit(engine, runner, PROMPTS[0], max_tokens=4)
    assert sink.done.wait(30)
    thread = runner._thread
    runner.stop(timeout=10)
    assert thread is not None and not thread.is_alive()
    assert sink.completion.token_ids == alone_ids(parts, PROMPTS[0], 4)
    assert_clean(engine)


# --- (h) a failing forward ----------------------------------------------------------------


def test_a_failing_step_fails_its_requests_and_the_runner_goes_on(
    parts: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = parts[0]
    engine = batch_engine(parts)
    runner = runner_of(engine, max_batch_tokens=6, max_running=4)
    forward = model.forward
    calls = {"n": 0, "fail_at": 4}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("out of device memory (simulated)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    victims = [submit(engine, runner, p, max_tokens=8) for p in PROMPTS[:2]]
    runner.start()
    try:
        for sink in victims:
            assert sink.done.wait(30)
            assert sink.outcome == "failed" and isinstance(sink.error, RuntimeError)
        assert runner.wait_idle(10)
        assert_clean(engine)
        after = submit(engine, runner, PROMPTS[1], max_tokens=8)
        assert after.done.wait(30)
        assert after.completion.token_ids == alone_ids(parts, PROMPTS[1], 8)
    finally:
        runner.stop()
    assert_clean(engine)


# --- (i) admission policy -----------------------------------------------------------------


class Logged(Sink):
    """A sink that appends its name to ``log`` when it finishes."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        self.log.append(self.name)
        super().finish(outcome, error)


@pytest.mark.parametrize("policy", ["fcfs", "lpm"])
def test_lpm_admits_the_longest_cached_prefix_first(parts: tuple[Any, Any], policy: str) -> None:
    engine = batch_engine(parts)
    limits: dict[str, Any] = {"max_running": 1, "max_batch_tokens": 64}
    if policy == "lpm":
        limits["policy"] = LPM
    runner = runner_of(engine, **limits)
    warm = SHARED + ids(40, 6)  # 20 tokens, 5 blocks indexed once done
    submit(engine, runner, warm, max_tokens=1)
    drive(runner)
    order: list[str] = []
    prompts = {"none": ids(41, 12), "short": SHARED[:8] + ids(42, 4), "long": [*warm, 3]}
    sinks = {}
    for name, prompt in prompts.items():
        sink = sinks[name] = Logged(name, order)
        runner.submit(engine.request(prompt, SamplingParams(max_tokens=2)), sink)
    drive(runner)
    assert order == (["long", "short", "none"] if policy == "lpm" else ["none", "short", "long"])
    for name, prompt in prompts.items():
        assert sinks[name].completion.token_ids == alone_ids(parts, prompt, 2)
    assert_clean(engine)


# --- tenant shares ------------------------------------------------------------------------


def test_another_tenants_protected_cache_does_not_fail_a_running_request(
    parts: tuple[Any, Any],
) -> None:
    lay = layout(parts)
    cache = PrefixKVCache(lay, BLOCK, lay.block_bytes(BLOCK) * 10, tenant_share=0.5)
    engine = Engine(parts[0], parts[1], cache)
    runner = runner_of(engine, max_batch_tokens=64)
    first = Sink()
    request = engine.request(ids(1, 21), SamplingParams(max_tokens=1), namespace=Namespace("b"))
    runner.submit(request, first)
    drive(runner)
    assert cache.tenant_stats("b").used_blocks == 5  # at its share: protected from stores
    second = Sink()
    prompt = ids(2, 24)  # needs 7 blocks of 10: only 5 free
    runner.submit(engine.request(prompt, SamplingParams(max_tokens=4), namespace="a"), second)
    drive(runner)
    assert second.outcome == "completed", second.error
    assert second.completion.token_ids == alone_ids(parts, prompt, 4)
    assert_clean(engine)


def test_the_model_check_waits_for_the_serial_engine(parts: tuple[Any, Any]) -> None:
    # check_supported switches the model's attention implementation while it probes: a
    # serial request running meanwhile would run paged attention without a step and fail.
    engine = batch_engine(parts)
    made: list[BatchRunner] = []
    with engine.model_lock:  # a serial forward is running
        worker = threading.Thread(target=lambda: made.append(runner_of(engine)))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and not made
    worker.join(30)
    assert made
    assert engine.generate(PROMPTS[0], max_tokens=3).token_ids == alone_ids(parts, PROMPTS[0], 3)


# --- random workloads ---------------------------------------------------------------------

BASES = [ids(100 + i, 20) for i in range(3)]


@pytest.mark.parametrize("seed", range(8))
def test_random_workloads_match_running_alone(parts: tuple[Any, Any], seed: int) -> None:
    """Random pools (some too small), limits, policies, arrivals, sampling and cancellations:
    the cache stays consistent after every step; every request not cancelled gets what it gets
    alone, and nothing stays pinned. The seeds spread over the kernels: each linear kernel
    twice, each attention kernel with both policies."""
    rng = random.Random(seed)
    blocks = rng.randrange(6, 30)
    model = kernel_llama(LINEAR_KERNELS[seed % len(LINEAR_KERNELS)])
    parts = (model, parts[1])
    lay = layout(parts)
    cache: Any
    if seed in (2, 7):  # a NullCache's pool: nothing reused, running sequences' KV only
        cache = NullCache(lay, BLOCK, capacity_bytes=lay.block_bytes(BLOCK) * blocks)
    else:
        cache = PrefixKVCache(lay, BLOCK, lay.block_bytes(BLOCK) * blocks)
    engine = Engine(parts[0], parts[1], cache)
    limits = BatchLimits(rng.randrange(1, 7), rng.randrange(1, 17), LPM if seed % 2 else FCFS)
    runner = kernel_runner(engine, ATTENTION_KERNELS[seed % len(ATTENTION_KERNELS)], limits)
    arrivals = []
    for i in range(8):
        prompt = rng.choice(BASES)[: rng.randrange(0, 21)] + ids(1000 * seed + i, rng.randrange(6))
        sampling: dict[str, Any] = {"max_tokens": rng.randrange(1, 13)}
        if rng.random() < 0.3:
            sampling.update(temperature=0.8, seed=rng.randrange(100))
        if -(-(len(prompt or [7]) + sampling["max_tokens"]) // BLOCK) > blocks:
            continue
        cancel = rng.randrange(6) if rng.random() < 0.15 else None
        arrivals.append((rng.randrange(15), prompt or [7], sampling, cancel))
    arrivals.sort(key=lambda a: a[0])
    sinks = []
    step = 0
    while arrivals or runner.num_running or runner.num_waiting:
        while arrivals and arrivals[0][0] <= step:
            _, prompt, sampling, cancel = arrivals.pop(0)
            sink = Sink(cancel_after=cancel)
            runner.submit(engine.request(prompt, SamplingParams.create(**sampling)), sink)
            sinks.append((prompt, sampling, sink))
        runner.step()
        cache.check_invariants()
        step += 1
        assert step < 2000
    assert sinks
    for prompt, sampling, sink in sinks:
        if sink.cancel_after is None:
            assert sink.completion.token_ids == alone(parts, prompt, **sampling).token_ids
        else:
            assert sink.outcome in ("completed", "stopped", "skipped")
    stats = cache.stats()
    assert stats.pinned_blocks == 0
    assert stats.free_blocks + stats.used_blocks == stats.total_blocks


@pytest.mark.parametrize(
    "limits",
    [{"max_running": 0}, {"max_batch_tokens": 0}, {"max_running": True}, {"max_batch_tokens": 2.0}],
)
def test_limits_must_be_positive_integers(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(limits))):
        BatchLimits(**limits)


def test_step_reports_what_it_did(parts: tuple[Any, Any]) -> None:
    engine = batch_engine(parts)
    runner = runner_of(engine, max_batch_tokens=5, max_running=2)
    assert runner.step() is None  # idle
    for prompt in (PROMPTS[0], PROMPTS[6]):
        submit(engine, runner, prompt, max_tokens=2)
    first = runner.step()
    assert first is not None
    # The one-token prompt decodes at once; the other gets the rest of the budget.
    assert (first.sequences, first.tokens, first.sampled) == (2, 5, 1)
    assert (first.running, first.waiting, first.preempted) == (2, 0, 0)
    drive(runner)
    assert runner.step() is None and runner.steps > 1
