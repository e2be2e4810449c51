"""The batch runner's decoder pass and lean model pass against transformers' modules, step
for step: one runner with ``running`` sequences decoding (SmolLM2, ``bench decode``'s
questions on one ~700-token document), its steps taking the three passes in turn (their
logits and KV are bit-identical, so switching between steps changes nothing but the time),
so a loaded machine's drift hits all alike. Prints each pass's step p50/p99/best (the best
is what a step costs when nothing else competes for the cores; with ``--threads 1`` the
stepping thread's CPU time, which other processes' load stretches least, is the steadiest
figure) and where a step's CPU time goes (of the stepping thread: all of it with
``--threads 1``): the native kernels by kind (timed around each door call, checks included,
which adds ~1 us a call; the decoder pass's one call a step is ``decoder``) and the rest
(Python glue, sampling and bookkeeping). Last, what the decoder pass's door checks cost a
step, and how one layer's attention uses two threads for 1-3 decoding sequences.

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
from prefixkv.engine.batch.decoder import DecoderPass
from prefixkv.engine.batch.lean import LeanPass
from prefixkv.engine.batch.passes import ModelPass, TransformersPass
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.request import SamplingParams
from prefixkv.threads import compute_on

KINDS = ("linear", "attend", "store", "rms_norm", "silu_mul", "rotary", "decoder")


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
            start = time.thread_time()
            try:
                return call(*args)
            finally:
                spent[kind] += time.thread_time() - start
                if spent["layer"] < 0:  # inside a lean layer (see layers_timed)
                    spent["layer doors"] += time.thread_time() - start

        return inner

    for kind, call in originals.items():
        setattr(kernels, kind, wrap(kind, call))

    def undo() -> None:
        for kind in KINDS:
            del kernels.__dict__[kind]  # the class's methods again

    return undo


def layers_timed(lean: LeanPass, spent: collections.Counter[str]) -> Callable[[], None]:
    """Time the lean pass's layers into ``spent["layer"]`` (negative while inside one);
    returns the undo."""
    layer = lean._layer

    def inner(*args: Any) -> Any:
        spent["layer"] -= time.thread_time() + 1e6  # below zero: inside
        try:
            return layer(*args)
        finally:
            spent["layer"] += time.thread_time() + 1e6

    object.__setattr__(lean, "_layer", inner)  # a frozen dataclass: for this measure only
    return lambda: object.__delattr__(lean, "_layer")


def measure(engine: Engine, running: int, steps: int) -> None:
    runner = started(engine, running, 5 * steps + 8)  # room for every phase
    decoder = runner.model_pass
    assert isinstance(decoder, DecoderPass), "the decoder pass does not cover this model"
    lean = decoder.lean
    passes: dict[str, ModelPass] = {
        "transformers": TransformersPass(engine.model, engine.model_lock),
        "lean": lean,
        "decoder": decoder,
    }
    times: dict[str, list[float]] = {name: [] for name in passes}
    cpu: dict[str, list[float]] = {name: [] for name in passes}
    names = tuple(passes)
    for i in range(len(names) * steps):
        name = names[i % len(names)]
        runner.model_pass = passes[name]
        start = time.thread_time()
        report = runner.step()
        cpu[name].append(time.thread_time() - start)
        assert report is not None and report.sampled == running
        times[name].append(report.seconds)
    for name, seconds in times.items():
        print(f"running={running:>3} {name:<12}: step p50 {percentile(seconds, 50) * 1e3:6.2f} ms "
              f"p99 {percentile(seconds, 99) * 1e3:6.2f} ms best {min(seconds) * 1e3:6.2f} ms; "
              f"this thread's CPU p50 {percentile(cpu[name], 50) * 1e3:6.2f} ms")  # fmt: skip
    for name, model_pass in passes.items():
        runner.model_pass = model_pass
        print(f"running={running:>3} {name:<12}: {breakdown(runner, lean, steps // 2)}")
    runner.stop()


def breakdown(runner: BatchRunner, lean: LeanPass, steps: int) -> str:
    """Where ``steps`` steps' CPU time goes (mean a step), in words; for the lean pass, also
    the glue inside its layers (what one C call per layer could save, the door checks
    aside)."""
    spent: collections.Counter[str] = collections.Counter()
    undo, undo_layers = timed(lean.kernels, spent), layers_timed(lean, spent)
    start = time.thread_time()
    reports = [runner.step() for _ in range(steps)]
    total = (time.thread_time() - start) / steps
    undo()
    undo_layers()
    assert all(r is not None and r.sampled == r.sequences for r in reports)
    parts = {kind: spent[kind] / steps for kind in KINDS}
    shown = ", ".join(f"{kind} {t * 1e3:.2f}" for kind, t in parts.items())
    rest = total - sum(parts.values())
    said = f"CPU a step {total * 1e3:.2f} ms (doors timed): {shown}; rest {rest * 1e3:.2f} ms"
    if spent["layer"]:
        glue = (spent["layer"] - spent["layer doors"]) / steps
        said += f" (in the layers, outside the doors: {glue * 1e3:.2f} ms)"
    return said


def door_checks(decoder: DecoderPass, repeat: int = 300) -> None:
    """What the decoder pass's door costs a step besides the library call: reading the
    layers' weights off their modules and checking them with the step's tensors (one row,
    the model's shapes), best of ``repeat``."""
    import torch

    from prefixkv.kernels.decoder import StepTensors, arguments
    from prefixkv.kernels.items import AttendItems

    kv_heads, dim = decoder.shape.kv_heads, decoder.shape.dim
    hidden = decoder.lean.norm.weight.shape[0]
    pool = torch.zeros(len(decoder.layers), 2, kv_heads, 4, 16, dim)
    step = StepTensors(torch.zeros(1, hidden), torch.zeros(1, dim), torch.zeros(1, dim), pool,
                       torch.tensor([5]))  # fmt: skip
    items = AttendItems([0, 1], [0], [1], [0], [0, 1], [5], [-1])
    lanes = decoder.lean.kernels.lanes

    def call() -> None:
        weights = [layer.weights() for layer in decoder.layers]
        arguments(step, items, weights, decoder.shape, float("inf"), lanes, 1)

    best = min(_seconds(call) for _ in range(repeat))
    print(f"decoder door: the layers' weights read and every argument checked, {best * 1e6:.0f}"
          f" us a step ({len(decoder.layers)} layers)")  # fmt: skip


def attention_threads(repeat: int = 300) -> None:
    """One layer's attention for 1-3 decoding sequences of 750 tokens at SmolLM2's shapes (9
    heads over 3 kv heads, dim 64): best time on one thread and on two. A work item is one
    kv head of one group, so one sequence is 3 jobs: on 2 threads one idles a third."""
    import torch

    from prefixkv.engine.batch.attention import SeqSpan
    from prefixkv.engine.batch.native import NativeKernel

    kernel = NativeKernel.create(3, torch.float32, torch.device("cpu"))
    keys, values = torch.randn(3, 4096, 64), torch.randn(3, 4096, 64)
    before = torch.get_num_threads()
    for seqs in (1, 2, 3):
        spans = [SeqSpan(i, 1, 750, ((1000 * i, 750),)) for i in range(seqs)]
        plan, _ = kernel.plan(spans, torch.device("cpu"))
        query, out = torch.randn(9, seqs, 64), torch.empty(seqs, 9, 64)
        call = functools.partial(plan.attend, query, keys, values, out, 0.125)
        best = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            best[threads] = min(_seconds(call) for _ in range(repeat))
        print(f"attention, {seqs} sequence(s) = {3 * seqs} jobs: {best[1] * 1e6:.0f} us on 1 "
              f"thread, {best[2] * 1e6:.0f} us on 2 ({best[1] / best[2]:.2f}x)")  # fmt: skip
    torch.set_num_threads(before)


def _seconds(call: Callable[[], None]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


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
    decoder = BatchRunner(engine, BatchLimits()).model_pass
    if isinstance(decoder, DecoderPass):
        door_checks(decoder)
    attention_threads()


if __name__ == "__main__":
    main()
