"""What holding the token embedding as the file's rows costs and saves
(:mod:`prefixkv.engine.embedding`).

``rss``: the process's RSS (``/proc/self/statm``) after ``Engine.from_pretrained(MODEL,
weights=W)``, ``gc.collect()`` and :func:`prefixkv.heap.release_free_heap`, and the bytes
the input embedding holds. Run it in a fresh process per setting (RSS counts everything
the process touched)::

    PYTHONPATH=src python benchmarks/embedding_cost.py rss --weights auto

``lookup``: one lookup of N ids (1 and 16: decode steps; 512: a prefill chunk) in the
loaded ``auto`` table against ``nn.Embedding`` on the float32 table it replaced, best of
``--repeat`` calls per size, the two taking turns (``--threads 1``: no wait for a pool)::

    PYTHONPATH=src python benchmarks/embedding_cost.py lookup [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time

import torch

from prefixkv import Engine
from prefixkv.heap import release_free_heap


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def table_mib(module: torch.nn.Module) -> float:
    held = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in held) / 2**20


def rss(model: str, weights: str) -> None:
    engine = Engine.from_pretrained(model, weights=weights)
    gc.collect()
    release_free_heap()
    table = engine.model.get_input_embeddings()
    print(
        f"{model} weights={weights}: RSS {rss_mib():.0f} MiB; input embedding "
        f"{type(table).__name__} {getattr(table, 'format', 'f32')} {table_mib(table):.1f} MiB"
    )


def ms_of(call: torch.nn.Module, ids: torch.Tensor) -> float:
    start = time.perf_counter()
    call(ids)
    return (time.perf_counter() - start) * 1e3


def lookup(model: str, sizes: list[int], repeat: int) -> None:
    engine = Engine.from_pretrained(model, weights="auto")
    narrow = engine.model.get_input_embeddings()
    plain = torch.nn.Embedding.from_pretrained(narrow.table())  # the float32 it replaced
    vocab = plain.num_embeddings
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# {model}: {narrow.format} {table_mib(narrow):.1f} MiB vs f32 {table_mib(plain):.1f}")
    with torch.inference_mode():
        for n in sizes:
            times: dict[str, list[float]] = {"f32": [], narrow.format: []}
            for _ in range(repeat):
                ids = torch.randint(0, vocab, (1, n))  # fresh ids: rows not in cache
                assert torch.equal(narrow(ids), plain(ids))
                times["f32"].append(ms_of(plain, ids))
                times[narrow.format].append(ms_of(narrow, ids))
            row = ", ".join(f"{k} {min(v):.4f} ms" for k, v in times.items())
            print(f"{n:4d} ids: {row}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["rss", "lookup"])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 512])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as set)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "rss":
        rss(args.model, args.weights)
    else:
        lookup(args.model, args.sizes, args.repeat)


if __name__ == "__main__":
    main()
