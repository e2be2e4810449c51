"""What the native kernels' door (prefixkv.kernels.ops) costs per call: each function through
the door against the same library call made directly with the same arguments (the checks
skipped), at the shapes of a SmolLM2 decode step of 16 sequences, best of ``--repeat``
timeit runs. The checks' cost is measured with the library's functions replaced by a no-op
on both sides (so the kernels' own time, which varies far more than the checks cost on a
busy machine, cancels out), then summed over a decode step (121 linear calls, 61 norms, 30
SiLU * up, 30 stores, 30 attention calls); the real calls' times are printed alongside. Last,
the once-a-step cost of planning (and checking) a step's work items.

    python benchmarks/kernel_door.py
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import math
import timeit
from collections.abc import Callable
from typing import Any

import torch

from prefixkv.engine.batch.attention import SeqSpan
from prefixkv.engine.batch.native import NativeKernel, NativePlan
from prefixkv.kernels import abi
from prefixkv.kernels.formats import CODES, pack_f32
from prefixkv.kernels.ops import Kernels, load

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, DIM, SEQS, CONTEXT = 576, 1536, 9, 3, 64, 16, 760
PER_STEP = {"linear": 121, "rms_norm": 61, "silu_mul": 30, "store": 30, "attend": 30}


class NoOp:
    """The library's functions as no-ops (returning OK)."""

    def __getattr__(self, name: str) -> Callable[..., int]:
        return lambda *args: 0


def calls(k: Kernels, lib: Any) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """Per function: (through the door ``k``, ``lib`` directly), same arguments."""
    threads = torch.get_num_threads()
    x, norm_w = torch.randn(SEQS, HIDDEN), torch.randn(HIDDEN)
    weight = pack_f32(torch.randn(INTERMEDIATE * 2, HIDDEN))
    joined = torch.randn(SEQS, 2 * INTERMEDIATE)
    keys, values = torch.randn(KV_HEADS, 4096, DIM), torch.randn(KV_HEADS, 4096, DIM)
    new_k = torch.randn(KV_HEADS, SEQS, DIM)
    new_v = torch.randn(SEQS, KV_HEADS, DIM).transpose(0, 1)
    slots = torch.arange(SEQS) * 100 + CONTEXT
    spans = [SeqSpan(i, 1, CONTEXT, ((i * 100 + 0, CONTEXT),)) for i in range(SEQS)]
    plan, _ = NativeKernel.create(HEADS // KV_HEADS, torch.float32, torch.device("cpu")).plan(
        spans, torch.device("cpu")
    )
    assert isinstance(plan, NativePlan)
    items, query = plan.items, torch.randn(HEADS, SEQS, DIM)
    attended = torch.empty(SEQS, HEADS, DIM)

    def raw_attend() -> object:
        args = abi.AttendArgs(
            abi.ATTEND_ARGS_SIZE, abi.ABI_VERSION, query.data_ptr(), query.stride(0),
            query.stride(1), keys.data_ptr(), values.data_ptr(), keys.stride(0),
            attended.data_ptr(), *items.pointers, items.max_tokens, HEADS, KV_HEADS, DIM,
            items.count, threads, 0.125, math.inf,
        )  # fmt: skip
        return lib.prefixkv_attend(ctypes.byref(args))

    # The direct calls allocate their outputs as the door (and the layers before it) does.
    def raw_linear() -> object:
        y = x.new_empty(SEQS, 2 * INTERMEDIATE)
        lib.prefixkv_linear(x.data_ptr(), SEQS, HIDDEN, CODES["f32"], weight.data.data_ptr(),
                            None, 2 * INTERMEDIATE, y.data_ptr(), threads)  # fmt: skip
        return y

    def raw_rms_norm() -> object:
        y = torch.empty_like(x)
        lib.prefixkv_rms_norm(x.data_ptr(), SEQS, HIDDEN, HIDDEN, norm_w.data_ptr(), 1e-5,
                              y.data_ptr())  # fmt: skip
        return y

    def raw_silu_mul() -> object:
        y = joined.new_empty(SEQS, INTERMEDIATE)
        lib.prefixkv_silu_mul(joined.data_ptr(), SEQS, INTERMEDIATE, 2 * INTERMEDIATE,
                              y.data_ptr(), threads)  # fmt: skip
        return y

    def raw_store() -> object:
        return lib.prefixkv_store(
            keys.data_ptr(), values.data_ptr(), keys.stride(0), keys.shape[1],
            new_k.data_ptr(), new_k.stride(0), new_k.stride(1), new_v.data_ptr(),
            new_v.stride(0), new_v.stride(1), KV_HEADS, DIM, SEQS, slots.data_ptr(),
        )  # fmt: skip

    return {
        "linear": (lambda: k.linear(x, weight, None), raw_linear),
        "rms_norm": (lambda: k.rms_norm(x, norm_w, 1e-5), raw_rms_norm),
        "silu_mul": (lambda: k.silu_mul(joined, INTERMEDIATE), raw_silu_mul),
        "store": (lambda: k.store(keys, values, new_k, new_v, slots), raw_store),
        "attend": (
            lambda: k.attend(items, query, keys, values, attended, 0.125, math.inf),
            raw_attend,
        ),
    }


def best_us(function: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args()
    kernels = load()
    null = copy.copy(kernels)
    null._lib = NoOp()  # type: ignore[assignment]
    real, checks = calls(kernels, kernels._lib), calls(null, null._lib)
    total = 0.0
    print(f"# per call, best of {args.repeat} x {args.number} calls; torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    for name in real:
        door, direct = (best_us(f, args.number, args.repeat) for f in checks[name])
        call = best_us(real[name][1], args.number, args.repeat)
        total += (door - direct) * PER_STEP[name]
        print(f"{name:9s} checks {door - direct:5.2f} us (door {door:5.2f}, direct {direct:5.2f}"
              f" us, the C a no-op) x {PER_STEP[name]:3d} a step; the real call {call:8.1f} us")  # fmt: skip
    spans = [SeqSpan(i, 1, CONTEXT, ((i * 100, CONTEXT),)) for i in range(SEQS)]
    kernel = NativeKernel.create(HEADS // KV_HEADS, torch.float32, torch.device("cpu"))
    plan_us = best_us(lambda: kernel.plan(spans, torch.device("cpu")), 20, args.repeat)
    print(f"# checks per decode step of {SEQS} sequences: {total:.0f} us; planning the step's "
          f"work items (AttendItems checks included) {plan_us:.0f} us once a step")  # fmt: skip


if __name__ == "__main__":
    main()
