"""Resident memory of a loaded model, step by step: what ``Engine.from_pretrained`` does
after loading, in its order, with the process's RSS after each step.

1. load the model (transformers maps the checkpoint file) and install the linear kernel
   (the native one packs its own copies of the projection weights);
2. copy the weights still backed by the file mapping (:mod:`prefixkv.engine.mapped`), so the
   mapping goes;
3. give the C heap's free pages back (:mod:`prefixkv.heap`).

Run it in a fresh process (RSS counts everything the process has touched):

    PYTHONPATH=src python benchmarks/load_memory.py --model smollm2
"""

from __future__ import annotations

import argparse
import gc
import os
import platform

from prefixkv.bench.soak_sample import resident_bytes
from prefixkv.engine.linear import linear_kernel
from prefixkv.engine.loader import load_model
from prefixkv.engine.mapped import copy_mapped_weights
from prefixkv.heap import release_free_heap


def rss_mb() -> float:
    return resident_bytes(os.getpid()) / 1e6


def mapped_mb(path_part: str) -> float:
    """RSS of the mappings of files whose path contains ``path_part``."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                inside = path_part in line
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--kernel", default="auto", help="linear kernel (auto)")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, model {args.model}")
    loaded = load_model(args.model)
    swapped = linear_kernel(args.kernel, loaded.model).install(loaded.model)
    gc.collect()
    print(
        f"loaded, {swapped} linear layers swapped: RSS {rss_mb():7.0f} MB "
        f"(checkpoint files mapped: {mapped_mb('.safetensors'):.0f} MB)"
    )
    copied = copy_mapped_weights(loaded.model)
    gc.collect()
    print(
        f"mapped weights copied ({copied / 1e6:.0f} MB): RSS {rss_mb():7.0f} MB "
        f"(checkpoint files mapped: {mapped_mb('.safetensors'):.0f} MB)"
    )
    release_free_heap()
    print(f"free heap given back:          RSS {rss_mb():7.0f} MB")


if __name__ == "__main__":
    main()
