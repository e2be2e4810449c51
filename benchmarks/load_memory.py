"""Resident memory and time of loading a model as ``prefixkv serve`` loads it (the model and
its kernels; no KV pool), against the checkpoint's size on disk.

One line per run: the checkpoint's bytes; the baseline (RSS once torch, transformers and
prefixkv's engine are imported, before any load); the load's seconds; RSS after the load
and the process's peak RSS (VmHWM); what is left of the checkpoint file mapped; the linear
layers' formats. The target (issue 24): RSS after load <= 1.1 x file size + baseline.
Run each load in a fresh process (RSS counts everything the process has touched); a
first load of a GGUF also writes its converted folder, so run twice and keep the second:

    PYTHONPATH=src python benchmarks/load_memory.py --model smollm2 --weights auto

Only ``load_kernels`` and ``EngineSettings`` are used, so the same script measures an
older checkout (``PYTHONPATH=/path/to/old/src``). ``--ask PROMPT`` then builds the
engine (a KV pool of ``--cache-bytes``) and answers the prompt, with RSS after it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

_MB = 1e6


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (VmRSS: resident now; VmHWM: the peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise KeyError(field)


def mapped_mb(suffixes: tuple[str, ...]) -> float:
    """RSS of the mappings of files whose path ends with one of ``suffixes``."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                inside = line.rstrip().endswith(suffixes)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total * 1000 / _MB


def checkpoint_bytes(path: Path) -> int:
    """The GGUF file's size, or the folder's weight files' (safetensors)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--weights", default="auto", help="--weights (auto, fp32, bf16)")
    parser.add_argument("--kernel", default="auto", help="linear kernel (auto)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="converted models")
    parser.add_argument("--label", default="", help="a name for this checkout, printed")
    parser.add_argument("--ask", default="", help="then answer this prompt (8 tokens)")
    parser.add_argument("--cache-bytes", type=int, default=64 << 20, help="KV pool for --ask")
    args = parser.parse_args()
    import torch  # noqa: F401  (the baseline: what every load imports first)
    import transformers  # noqa: F401

    from prefixkv.engine.build import EngineSettings, load_kernels
    from prefixkv.engine.linear import formats_of
    from prefixkv.engine.loader import resolve_model

    baseline = status_kb("VmRSS") * 1000 / _MB
    source = resolve_model(args.model)
    settings = EngineSettings(model=args.model, linear_kernel=args.kernel,
                              weights=args.weights, model_cache_dir=args.cache_dir)  # fmt: skip
    start = time.perf_counter()
    loaded = load_kernels(settings)
    seconds = time.perf_counter() - start
    record = {
        "label": args.label,
        "model": args.model,
        "weights": args.weights,
        "file_mb": round(checkpoint_bytes(source) / _MB),
        "baseline_mb": round(baseline),
        "load_s": round(seconds, 2),
        "rss_mb": round(status_kb("VmRSS") * 1000 / _MB),
        "peak_mb": round(status_kb("VmHWM") * 1000 / _MB),
        "mapped_mb": round(mapped_mb((".gguf", ".safetensors"))),
        "formats": formats_of(loaded.model),
        "cpu": platform.processor() or platform.machine(),
        "pid": os.getpid(),
    }
    target = 1.1 * record["file_mb"] + record["baseline_mb"]
    record["target_mb"] = round(target)
    if args.ask:  # one request through a built engine, its KV pool of --cache-bytes
        from prefixkv.engine.build import assemble

        asking = EngineSettings(model=args.model, cache_bytes=args.cache_bytes)
        engine = assemble(asking, loaded.model, loaded.tokenizer, loaded.name).engine
        start = time.perf_counter()
        reply = engine.generate(args.ask, max_tokens=8, temperature=0)
        record["answer_s"] = round(time.perf_counter() - start, 2)
        record["answer_tokens"] = len(reply.token_ids)
        record["rss_answered_mb"] = round(status_kb("VmRSS") * 1000 / _MB)
        record["peak_answered_mb"] = round(status_kb("VmHWM") * 1000 / _MB)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
