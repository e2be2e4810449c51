"""The batch runner's lean model pass against transformers' modules, step for step: one
runner with ``running`` sequences decoding (SmolLM2, ``bench decode``'s questions on one
~700-token document), its steps alternating between the two passes (their logits and KV
are bit-identical, so switching between steps changes nothing but the time), so a loaded
machine's drift hits both alike. Prints each pass's step p50/p99/best (the best is what a
step costs when nothing else competes for the cores) and, for the lean pass,
where a step's time goes: the native kernels by kind (timed around each door call, which
adds ~0.3 us a call) and the rest (Python glue).

    python benchmarks/lean_pass.py --weights auto --running 1,4,16 --steps 40 [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import functools
import time
from collections.abc import Callable
from typing import Any

from prefixkv.bench.decode import _messages, _Quiet
from prefixkv.bench.stats import percentile
from prefixkv.engine.batch.lean import LeanPass
from prefixkv.engine.batch.passes import TransformersPass
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.request import SamplingParams
from prefixkv.threads import compute_on

KINDS = ("linear", "attend", "store", "rms_norm", "silu_mul", "rotary")


def started(engine: Engine, running: int, tokens: int) -> BatchRunner:
    """A runner whose ``running`` sequences all decode in the same step."""
    runner = BatchRunner(engine, BatchLimits(max_running=running, max_batch_tokens=4096))
    for i in range(running):
        runner.submit(
            engine.request(_messages(i), SamplingParams(max_tokens=tokens, ignore_eos=True)),
            _Quiet(),
        )
    while True:
        report = runner.step()
        if report is not None and report.sampled == running == report.sequences:
            return runner


def timed(kernels: Any, spent: collections.Counter[str]) -> Callable[[], None]:
    """Wrap ``kernels``' door methods to add their seconds to ``spent``; returns the undo."""
    originals = {kind: getattr(kernels, kind) for kind in KINDS}

    def wrap(kind: str, call: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(call)
        def inner(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return call(*args)
            finally:
                spent[kind] += time.perf_counter() - start

        return inner

    for kind, call in originals.items():
        setattr(kernels, kind, wrap(kind, call))

    def undo() -> None:
        for kind in KINDS:
            del kernels.__dict__[kind]  # the class's methods again

    return undo


def measure(engine: Engine, running: int, steps: int) -> None:
    runner = started(engine, running, 2 * steps + 4)
    lean = runner.model_pass
    assert isinstance(lean, LeanPass), "the lean pass does not cover this model"
    passes = {"transformers": TransformersPass(engine.model, engine.model_lock), "lean": lean}
    times: dict[str, list[float]] = {name: [] for name in passes}
    for i in range(2 * steps):
        name = ("transformers", "lean")[i % 2]
        runner.model_pass = passes[name]
        report = runner.step()
        assert report is not None and report.sampled == running
        times[name].append(report.seconds)
    spent: collections.Counter[str] = collections.Counter()
    undo = timed(lean.kernels, spent)
    runner.model_pass = lean
    profiled = [runner.step() for _ in range(steps // 2)]
    undo()
    runner.stop()
    for name, seconds in times.items():
        print(f"running={running:>3} {name:<12}: step p50 {percentile(seconds, 50) * 1e3:6.2f} ms "
              f"p99 {percentile(seconds, 99) * 1e3:6.2f} ms best {min(seconds) * 1e3:6.2f} ms")  # fmt: skip
    total = sum(r.seconds for r in profiled if r is not None) / len(profiled)
    parts = {kind: spent[kind] / len(profiled) for kind in KINDS}  # means: summed per kind
    shown = ", ".join(f"{kind} {t * 1e3:.2f}" for kind, t in parts.items())
    print(f"running={running:>3} lean step (timed doors) {total * 1e3:.2f} ms: {shown}; "
          f"rest {(total - sum(parts.values())) * 1e3:.2f} ms")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--weights", default="auto")
    p.add_argument("--running", default="1,4,16")
    p.add_argument("--steps", type=int, default=40, help="steps per pass")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        compute_on(args.threads)
    engine = Engine.from_pretrained(args.model, cache_bytes=1 << 30, weights=args.weights)
    for running in (int(r) for r in args.running.split(",")):
        measure(engine, running, args.steps)


if __name__ == "__main__":
    main()
