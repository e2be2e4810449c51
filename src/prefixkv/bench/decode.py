"""``prefixkv bench decode``: decode tokens/s of the batch runner with 1, 4, 16 sequences
running, against the serial engine, on the same model in one process.

Every sequence asks its own question about one ~700-token document (cached once, so the
prefills are short); after every sequence has produced its first token, rounds of ``--steps``
batch steps alternate with one request decoded alone by the serial engine (its ms/token from
the second token on), so machine drift hits both alike. A decode step reads all weights once whatever the batch, so the floor
per step is weight bytes / memory bandwidth; the line prints achieved / floor.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from prefixkv.bench import workloads
from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.roofline import measure_bandwidth
from prefixkv.bench.stats import percentile
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.linear import kernel_of, linear_layers
from prefixkv.engine.request import Completion, SamplingParams


class _Quiet:
    """A Sink that discards output."""

    cancelled = False

    def deliver(self, item: str | Completion) -> None:
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
    engine: Engine, running: int, steps: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Seconds per decode step with ``running`` sequences in the batch runner, and seconds
    per token of one request on the serial engine, measured in alternating rounds (so drift
    in the machine's speed hits both alike)."""
    runner = BatchRunner(engine, BatchLimits(max_running=running, max_batch_tokens=4096))
    params = SamplingParams(max_tokens=steps * rounds + 2)
    for i in range(running):
        runner.submit(engine.request(_messages(i), params), _Quiet())
    while True:  # until every sequence decodes in the same step
        report = runner.step()
        if report is not None and report.sampled == running == report.sequences:
            break
    batch: list[float] = []
    serial: list[float] = []
    for _ in range(rounds):
        done = engine.generate(_messages(0), max_tokens=steps + 1)
        serial.append((done.total_time - done.ttft) / (len(done.token_ids) - 1))
        for _ in range(steps):
            report = runner.step()
            assert report is not None and report.sampled == running, "a sequence ended early"
            batch.append(report.seconds)
    runner.stop()
    return batch, serial


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
    p.add_argument("--running", default="1,4,16", help="sequences per step, comma-separated")
    p.add_argument("--steps", type=int, default=8, help="decode steps per round")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    p.add_argument("--out", type=Path, default=Path("results/decode.json"))
    args = p.parse_args(argv)
    info = machine_info()
    print(describe(info), flush=True)
    engine = Engine.from_pretrained(args.model, cache_bytes=1 << 30)
    # Bytes a decode step reads: every linear layer's weight (the output head included),
    # packed or not; the embedding is only gathered row by row.
    itemsize = next(engine.model.parameters()).element_size()
    weights = sum(m.in_features * m.out_features for m in linear_layers(engine.model)) * itemsize
    floor = weights / measure_bandwidth()
    print(f"# floor per step: {weights / 1e6:.0f} MB of weights at the measured bandwidth = "
          f"{floor * 1e3:.1f} ms")  # fmt: skip
    engine.generate(_messages(0), max_tokens=1)  # the document is now cached
    rows: list[dict[str, Any]] = []
    for running in (int(r) for r in args.running.split(",")):
        batch, serial = interleaved(engine, running, args.steps, args.rounds)
        rows.append(_line("batch runner", running, batch, floor))
        rows.append(_line("serial engine", 1, serial, floor))
        rows[-2]["vs_serial"] = rows[-2]["p50_ms"] / rows[-1]["p50_ms"]
    gemm = {n: linear_seconds(engine.model, n) for n in (1, 16)}
    print(f"# linear layers alone ({kernel_of(engine.model)} kernel): {gemm[1] * 1e3:.1f} ms for 1 row, "
          f"{gemm[16] * 1e3:.1f} ms for 16 (the weight-read floor: {floor * 1e3:.1f} ms)")  # fmt: skip
    one = rows[0]["tokens_per_s"]
    for row in rows[::2]:
        print(f"decode batch runner running={row['running']:>3}: "
              f"{row['tokens_per_s'] / one:.2f}x the tokens/s of one running; step "
              f"{row['vs_serial']:.3f}x the serial engine's ms/token in the same rounds")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "floor_s": floor, "rows": rows}, indent=2))
    print(f"results: {args.out}")
    return 0


def _line(name: str, running: int, times: list[float], floor: float) -> dict[str, Any]:
    p50, p99 = percentile(times, 50), percentile(times, 99)
    rate = running / p50
    print(f"decode {name:<13} running={running:>3}: step p50 {p50 * 1e3:7.1f} ms p99 "
          f"{p99 * 1e3:7.1f} ms  {rate:6.1f} tokens/s  step/floor {p50 / floor:.2f}x",
          flush=True)  # fmt: skip
    return {"engine": name, "running": running, "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3,
            "tokens_per_s": rate}  # fmt: skip
