"""The greedy choice over a vocabulary's logits: ``torch.argmax`` (a parallel region of
PyTorch's intra-op pool above 32K values) against numpy's on the calling thread (what
:func:`prefixkv.engine.sampling.greedy_token` runs), interleaved call by call, p50 and p99.

The difference is a stall, not arithmetic: on an idle host both take microseconds; when
other processes hold the cores, a parallel region waits for a worker the OS descheduled.
``--load N`` starts N busy processes (pure Python loops) for the run, as a loaded server
host has; ``--load 0`` measures the idle host.

    PYTHONPATH=src python benchmarks/argmax_stall.py --vocab 49152 --calls 20000 --load 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable

import torch

from prefixkv.engine.sampling import greedy_token


def _spin() -> None:
    while True:
        pass


def _quantiles(seconds: list[float]) -> str:
    cuts = statistics.quantiles(seconds, n=100)
    return f"p50 {cuts[49] * 1e6:7.1f} us   p99 {cuts[98] * 1e6:8.1f} us"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=49_152)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--load", type=int, default=2, help="busy processes during the run")
    args = p.parse_args()
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for spinner in spinners:
        spinner.start()
    try:
        logits = torch.randn(args.vocab)
        choices: dict[str, Callable[[], int]] = {
            "torch.argmax": lambda: int(torch.argmax(logits)),
            "numpy (greedy_token)": lambda: greedy_token(logits),
        }
        times: dict[str, list[float]] = {name: [] for name in choices}
        for _ in range(args.calls):
            for name, choose in choices.items():
                start = time.perf_counter()
                choose()
                times[name].append(time.perf_counter() - start)
    finally:
        for spinner in spinners:
            spinner.kill()
    print(f"# {args.vocab} float32 logits, {args.calls} calls each, interleaved; "
          f"{args.load} busy processes; torch threads {torch.get_num_threads()}")  # fmt: skip
    for name, seconds in times.items():
        print(f"{name:22s} {_quantiles(seconds)}")


if __name__ == "__main__":
    main()
