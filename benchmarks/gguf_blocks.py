"""What finding each linear layer's raw GGUF rows costs, next to the load it follows.

Loads the model as prefixkv does (``load_model``: the converted folder once it exists), then
times the steps of :func:`prefixkv.engine.gguf_blocks.scan_raw_weights` separately, best of
``--repeat`` runs each:

1. read the tensor table (:func:`prefixkv.engine.gguf_table.read_table`), and for
   comparison open the file with ``gguf.GGUFReader`` (parses every metadata value);
2. locate each Linear's tensor and row order (name table + transformers' processor);
3. build and verify every RawWeight (de-quantize the rows, compare bit for bit);
4. the whole scan, as a caller pays it.

    PYTHONPATH=src python benchmarks/gguf_blocks.py --model smollm2
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from gguf import GGUFReader

from prefixkv.engine import gguf_blocks
from prefixkv.engine.gguf_table import read_table
from prefixkv.engine.loader import load_model


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    """Shortest wall time of ``repeat`` calls of ``run``, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lm = load_model(args.model)
    model, path = lm.model, str(lm.source)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    t_reader, _ = best_of(args.repeat, lambda: GGUFReader(path))
    t_table, table = best_of(args.repeat, lambda: read_table(path))
    t_locate, located = best_of(args.repeat, lambda: gguf_blocks._locate(model, table))

    def build() -> list[Any]:
        built, names_of = [], gguf_blocks._names_by_parameter(model)
        for _, module in linears:
            hit = next(n for n in names_of[id(module.weight)] if n in located)
            built.append(gguf_blocks._raw_weight(module, located[hit]))
        return built

    t_verify, built = best_of(args.repeat, build)
    t_scan, scan = best_of(args.repeat, lambda: gguf_blocks.scan_raw_weights(model, path))
    weights = sum(int(m.weight.numel()) for _, m in linears)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"model {lm.name}: load_model {lm.load_seconds:.2f} s (first call, this process)")
    print(f"linear layers {len(linears)}, verified {len(scan.weights)}, left out {scan.left_out}")
    print(f"built {sum(isinstance(b, gguf_blocks.RawWeight) for b in built)} in step 3")
    print(
        f"1 read_table        {t_table * 1e3:8.0f} ms  (gguf.GGUFReader: {t_reader * 1e3:.0f} ms)"
    )
    print(f"2 locate            {t_locate * 1e3:8.0f} ms")
    print(
        f"3 build + verify    {t_verify * 1e3:8.0f} ms  ({weights / t_verify / 1e6:.0f} M weights/s)"
    )
    print(f"4 whole scan        {t_scan * 1e3:8.0f} ms")


if __name__ == "__main__":
    main()
