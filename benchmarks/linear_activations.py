"""The linear layers alone of one model under each ``--activations`` setting (``--weights
auto``), on one thread, best of ``--repeat`` with the settings taking turns (a shared
machine's load hits them alike): what 8-bit activations' integer dot products save in the
kernel, attention and the rest of a step left out.

    python benchmarks/linear_activations.py --model llama-1b-q4_0.gguf --repeat 8
"""

from __future__ import annotations

import argparse
import time

import torch

from prefixkv.engine.engine import Engine
from prefixkv.engine.linear import formats_of, linear_layers, streamed_bytes


def best_times(engines: dict[str, Engine], rows: int, repeat: int) -> dict[str, float]:
    """Best seconds per setting for one pass of its model's linear layers over ``rows``."""
    best = dict.fromkeys(engines, float("inf"))
    for _ in range(repeat):
        for name, engine in engines.items():
            layers = linear_layers(engine.model)
            inputs = {m.in_features: torch.randn(rows, m.in_features) for m in layers}
            with torch.inference_mode():
                start = time.perf_counter()
                for m in layers:
                    m(inputs[m.in_features])
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--activations", default="fp32,q8")
    p.add_argument("--repeat", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    engines = {
        name: Engine.from_pretrained(args.model, cache_bytes=1 << 26, activations=name)
        for name in args.activations.split(",")
    }
    for name, engine in engines.items():
        mb = streamed_bytes(engine.model) / 1e6
        print(f"--activations {name}: {formats_of(engine.model)}; {mb:.0f} MB", flush=True)
    for rows in (1, 16):
        best = best_times(engines, rows, args.repeat)
        print(f"rows={rows}: " + "  ".join(f"{n} {s * 1e3:.1f} ms" for n, s in best.items()))


if __name__ == "__main__":
    main()
