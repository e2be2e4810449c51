"""What a constrained request costs per generated token on SmolLM2, against the same request
unconstrained: a forced tool call (``tool_choice`` named, and ``required``) and a
``response_format`` json_schema, the three kinds the grammar mask serves.

``engine``: the batch runner in-process (no HTTP), one request at a time, greedy, torch's
default threads (as ``prefixkv serve``). Each kind's chat body goes through the server's
own parser; its twin is the same prompt and params without the grammar, with
``ignore_eos`` and ``max_tokens`` set to the constrained reply's length, so both generate
as many tokens. Three variants per round, interleaved so the host's load hits all alike:
``free`` (the twin), ``reference`` (constrained, through the torch bitmask path and
``clone`` that :mod:`prefixkv.engine.bitmask` replaced) and ``shipped`` (constrained, as
the engine runs it). Every decode step is timed (the prefill step is not); prints p50 and
p99 of ms per generated token per kind and variant, each constrained variant's p50 and p99
over the twin's, and whether ``reference`` and ``shipped`` chose the same tokens.

``server``: the same three bodies and twins through a running ``prefixkv serve`` with the
official ``openai`` client, streamed; ms per generated token, request sent to last chunk
(p50 over ``--rounds``, constrained and twin interleaved).

    PYTHONPATH=src python benchmarks/constrained_steps.py engine --rounds 4
    PYTHONPATH=src python benchmarks/constrained_steps.py server --url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from prefixkv.bench.conformance import PERSON, WEATHER

NAMED = {"type": "function", "function": {"name": "get_weather"}}
KINDS: dict[str, dict[str, Any]] = {
    "named": {"tools": [WEATHER], "tool_choice": NAMED},
    "required": {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False},
    "schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    },
}
MESSAGES = [{"role": "user", "content": "Weather in Paris? Then describe yourself."}]


@dataclass(frozen=True)
class Timing:
    """One variant's seconds: per decode step, and per ``Decoding.accept``."""

    steps: list[float] = field(default_factory=list)
    accepts: list[float] = field(default_factory=list)


def _body(kind: str) -> dict[str, Any]:
    return {"model": "smollm2", "messages": MESSAGES, "temperature": 0, "max_tokens": 60,
            **KINDS[kind]}  # fmt: skip


@contextlib.contextmanager
def _reference_path() -> Iterator[None]:
    """The constrained path as it was: the torch bitmask and the torch clone."""
    from prefixkv.engine import bitmask, processors

    fast, copy = bitmask.apply_bitmask, processors.private_copy
    bitmask.apply_bitmask = bitmask.apply_bitmask_reference
    processors.private_copy = torch.Tensor.clone
    try:
        yield
    finally:
        bitmask.apply_bitmask, processors.private_copy = fast, copy


@contextlib.contextmanager
def _timed_accepts(into: list[float]) -> Iterator[None]:
    """Appends the seconds of each ``Decoding.accept`` (processors, mask, sampler, text) to
    ``into``: the constrained path's own cost, which the forward pass's noise cannot hide."""
    from prefixkv.engine.decoding import Decoding

    original = Decoding.accept

    def timed(self: Any, logits: torch.Tensor, sink: Any) -> None:
        begun = time.perf_counter()
        original(self, logits, sink)
        into.append(time.perf_counter() - begun)

    Decoding.accept = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        Decoding.accept = original  # type: ignore[method-assign]


def _run(engine: Any, prompt: Any, params: Any, timing: Timing) -> tuple[int, ...]:
    """Runs one request alone on a runner, adding the seconds of each decode step (not the
    prefill's) and of each accept to ``timing``; returns its tokens."""
    from prefixkv.engine.batch.records import BatchLimits
    from prefixkv.engine.batch.runner import BatchRunner
    from prefixkv.engine.sinks import Collect

    runner = BatchRunner(engine, BatchLimits())
    sink = Collect()
    runner.submit(engine.request(prompt, params, namespace=object()), sink)
    with _timed_accepts(timing.accepts):
        while runner.num_running or runner.num_waiting:
            begun = time.perf_counter()
            report = runner.step()
            if report is not None and report.tokens == report.sampled == 1:  # decode only
                timing.steps.append(time.perf_counter() - begun)
    return sink.result().token_ids


def _quantiles(seconds: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return statistics.median(seconds), cuts[98]


def engine_bench(rounds: int) -> None:
    from prefixkv.engine.engine import Engine
    from prefixkv.server.parse import parse_chat
    from prefixkv.server.settings import ServerSettings

    engine = Engine.from_pretrained("smollm2")
    settings = ServerSettings(model_names=("smollm2",))
    print(f"torch threads {torch.get_num_threads()}, {rounds} rounds")
    for kind in KINDS:
        parsed = parse_chat(_body(kind), settings)
        timings = {name: Timing() for name in ("free", "reference", "shipped")}
        tokens: dict[str, tuple[int, ...]] = {}
        for _ in range(rounds):
            with _reference_path():
                tokens["reference"] = _run(engine, parsed.prompt, parsed.params,
                                           timings["reference"])  # fmt: skip
            tokens["shipped"] = _run(engine, parsed.prompt, parsed.params, timings["shipped"])
            twin = replace(parsed.params, grammar=None, ignore_eos=True,
                           max_tokens=len(tokens["shipped"]))  # fmt: skip
            _run(engine, parsed.prompt, twin, timings["free"])
        _report(kind, timings)
        same = tokens["reference"] == tokens["shipped"]
        print(f"{kind:8s} {len(tokens['shipped'])} tokens; reference and shipped identical: {same}")


def _report(kind: str, timings: dict[str, Timing]) -> None:
    free50, free99 = _quantiles(timings["free"].steps)
    for name, timing in timings.items():
        p50, p99 = _quantiles(timing.steps)
        a50, a99 = _quantiles(timing.accepts)
        print(f"{kind:8s} {name:9s} step p50 {p50 * 1e3:7.2f} ms p99 {p99 * 1e3:7.2f} ms "
              f"({p50 / free50:.2f}x, {p99 / free99:.2f}x the twin's; {len(timing.steps)} "
              f"steps); accept p50 {a50 * 1e3:6.3f} ms p99 {a99 * 1e3:7.3f} ms")  # fmt: skip


def _streamed(client: Any, body: dict[str, Any]) -> float:
    """Seconds per generated token of one streamed request, sent to last chunk (the prompt
    is cached by then: its prefill is a block at most). Not first chunk to last: a forced
    call's first chunk waits for the call's name, many tokens in."""
    count = 0
    begun = time.perf_counter()
    stream = client.chat.completions.create(**body, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    for chunk in stream:
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    return (time.perf_counter() - begun) / max(count, 1)


def server_bench(url: str, rounds: int) -> None:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused")
    for kind in KINDS:
        body = _body(kind)
        reply = client.chat.completions.create(**body)  # also compiles the grammar
        assert reply.usage is not None
        twin = {k: v for k, v in body.items() if k not in ("tool_choice", "response_format")}
        twin.update(max_tokens=reply.usage.completion_tokens, extra_body={"ignore_eos": True})
        forced, free = [], []
        for _ in range(rounds):
            forced.append(_streamed(client, body))
            free.append(_streamed(client, twin))
        held, loose = statistics.median(forced), statistics.median(free)
        print(f"{kind:8s} constrained {held * 1e3:7.2f} ms, unconstrained {loose * 1e3:7.2f} ms "
              f"per token (p50 of {rounds}; {held / loose:.2f}x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["engine", "server"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    args = parser.parse_args()
    if args.what == "engine":
        engine_bench(args.rounds)
    else:
        server_bench(args.url, args.rounds)


if __name__ == "__main__":
    main()
