"""``prefixkv bench soak``: a real ``prefixkv serve`` (batch backend) under mixed traffic for
``--minutes``, sampled over time, with a verdict.

The server runs with a RAM pool smaller than the working set (long shared documents x
questions, multi-turn chats, unique prompts: the pool evicts all the time), a disk tier in a
private temporary directory and a Redis tier on a private ``redis-server`` started here
(bounded by ``--redis-maxmemory``, LRU). ``--clients`` clients keep it busy
(:mod:`.soak_traffic`): streaming and not, some dropping the connection mid-stream on purpose.
Mid-run the redis-server is stopped and, ``--redis-down`` seconds later, started again on the
same port while traffic goes on (:mod:`.soak_run`).

Every ``--interval`` seconds a sample (:mod:`.soak_sample`): the server's RSS and open
descriptors, its pool (free + used + reserved == total), tier errors, requests served and
errors; every ``--quiet-every`` seconds a quiet point (clients paused, the server idle:
nothing pinned or reserved). It prints a line per sample, then a verdict against the targets
(:mod:`.soak_verdict`, which defines "flat"), writes the JSON, a chart and the server's log,
and exits 1 when a target is missed (2 when it cannot run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefixkv.bench import servers, workloads
from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.soak_traffic import Mix
from prefixkv.cli.options import add_option, parse_bytes, positive_float, positive_int

WEIGHTS = (0.5, 0.3, 0.2)  # doc, chat, unique (soak_traffic.KINDS)


def fraction(low: float, high: float) -> Any:
    """An argparse type: a float in [low, high]."""

    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {text}")
        return value

    return parse


# (flag, help, type, default) of each option, by what it sets.
_RUN: list[tuple[str, str, Any, str | None]] = [
    ("--model", "model spec", str, "smollm2"),
    ("--minutes", "how long the traffic runs", positive_float, "30"),
    ("--interval", "seconds between samples", positive_float, "30"),
    ("--quiet-every", "seconds between quiet points", positive_float, "300"),
    ("--cache-bytes", "the server's RAM pool", parse_bytes, "96MiB"),
    ("--block-size", "tokens per cache block", positive_int, "16"),
    ("--threads", "torch CPU threads of the server (default: torch's choice)", positive_int, None),
    ("--disk-bytes", "the disk tier's size", parse_bytes, "512MiB"),
    ("--redis-maxmemory", "the redis-server's maxmemory", str, "256mb"),
    ("--redis-server", "redis-server binary", str, "redis-server"),
    ("--redis-stop-at", "when Redis stops, as a fraction of the run", fraction(0.05, 0.9), "0.4"),
    ("--redis-down", "seconds Redis stays down", positive_float, "20"),
    ("--out", "JSON results file", Path, "results/soak.json"),
    ("--chart", "PNG chart", Path, "results/soak.png"),
    ("--server-log", "where the server's log is kept", Path, "results/soak-server.log"),
]
_TRAFFIC: list[tuple[str, str, Any, str | None]] = [
    ("--clients", "concurrent clients", positive_int, "4"),
    ("--documents", "long shared documents", positive_int, "8"),
    ("--sentences", "sentences per document (~20 tokens each)", positive_int, "24"),
    ("--questions", "questions per document", positive_int, "4"),
    ("--turns", "turns per chat before it begins anew", positive_int, "6"),
    ("--max-tokens", "most tokens per reply", positive_int, "16"),
    ("--stream-fraction", "requests that stream", fraction(0, 1), "0.5"),
    ("--disconnect-fraction", "streams dropped after their first text", fraction(0, 1), "0.2"),
    ("--seed", "the clients' random choices", int, "0"),
]
_TARGETS: list[tuple[str, str, Any, str | None]] = [
    ("--warmup", "fraction of the run before flatness is judged", fraction(0, 0.5), "0.25"),
    ("--rss-growth-mib", "RSS growth allowed in the last half", float, "32"),
    ("--rss-slope-mib", "RSS slope allowed after warm-up, MiB/hour", float, "32"),
    ("--fd-growth", "descriptor growth allowed in the last half", float, "8"),
    ("--fd-slope", "descriptor slope allowed after warm-up, per hour", float, "32"),
    ("--recovery", "seconds after Redis is back that its tier may count errors", positive_float,
     "15"),
    ("--stall", "longest stretch without a reply after warm-up, seconds", positive_float, "120"),
]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefixkv bench soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, text, kind, default in (*_RUN, *_TRAFFIC, *_TARGETS):
        add_option(p, flag, text, type=kind, default=default)
    return p


def tier_flags(disk_dir: Path, disk_bytes: int, redis_url: str, key_file: Path) -> list[str]:
    """The server's tier flags, all of them here. Redis is shared, so its records are sealed
    with a tier key (``key_file``, written by the caller), as a production server's must be."""
    return [
        "--disk-cache",
        str(disk_dir),
        "--disk-cache-bytes",
        str(disk_bytes),
        "--redis-url",
        redis_url,
        "--tier-key-file",
        str(key_file),
    ]


def server_flags(
    args: argparse.Namespace, disk_dir: Path, redis_url: str, key_file: Path
) -> list[str]:
    """Every flag of the server under test but its model, host and port."""
    flags = ["--backend", "batch", "--cache-bytes", str(args.cache_bytes)]
    flags += ["--block-size", str(args.block_size), "--log-level", "info"]
    flags += ["--max-tokens-limit", str(args.max_tokens)]
    flags += ["--threads", str(args.threads)] if args.threads else []
    return flags + tier_flags(disk_dir, args.disk_bytes, redis_url, key_file)


def redis_options(args: argparse.Namespace) -> tuple[str, ...]:
    return ("--maxmemory", args.redis_maxmemory, "--maxmemory-policy", "allkeys-lru")


def make_mix(args: argparse.Namespace) -> Mix:
    docs = tuple(workloads.document(70_000 + d, args.sentences) for d in range(args.documents))
    return Mix(
        args.model,
        docs,
        args.questions,
        WEIGHTS,
        args.stream_fraction,
        args.disconnect_fraction,
        args.max_tokens,
        args.turns,
    )


def working_set(folder: Path, mix: Mix, args: argparse.Namespace) -> dict[str, Any]:
    """The documents' KV against the pool, in blocks and bytes (tokens by the model's own
    tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokens = [len(tokenizer(d)["input_ids"]) for d in mix.documents]
    block_bytes = args.block_size * servers.kv_bytes_per_token(servers.read_config(folder))
    blocks = sum(t // args.block_size for t in tokens)
    pool = args.cache_bytes // block_bytes
    return {
        "document_tokens": tokens,
        "document_blocks": blocks,
        "pool_blocks": pool,
        "block_bytes": block_bytes,
        "documents_per_pool": blocks / max(1, pool),
    }


def header(args: argparse.Namespace, shape: dict[str, Any]) -> str:
    tokens = shape["document_tokens"]
    return (
        f"# prefixkv bench soak: {args.model}, {args.minutes:g} min, {args.clients} clients; "
        f"{len(tokens)} documents of {min(tokens)}-{max(tokens)} tokens = "
        f"{shape['document_blocks']} blocks ({shape['document_blocks'] * shape['block_bytes'] / 2**20:.0f} MiB of KV) "
        f"vs a pool of {shape['pool_blocks']} blocks ({shape['documents_per_pool']:.1f}x it), "
        f"plus chats and unique prompts; streams {args.stream_fraction:g}, of them dropped "
        f"{args.disconnect_fraction:g}; redis-server down at "
        f"{args.redis_stop_at * args.minutes:.1f} min for {args.redis_down:g} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every target is met, 1 when one is missed, 2 when it cannot run."""
    from prefixkv.bench import soak_execute
    from prefixkv.bench.tiers_servers import redis_binary

    args = parser().parse_args(argv or [])
    binary = redis_binary(args.redis_server)
    if binary is None:
        print(
            f"prefixkv bench soak: no {args.redis_server!r} on PATH; install redis-server "
            "(apt-get install redis-server) or name it with --redis-server",
            file=sys.stderr,
        )
        return 2
    folder = servers.model_folder(args.model)
    mix = make_mix(args)
    shape = working_set(folder, mix, args)
    print(describe(machine_info()), header(args, shape), sep="\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="prefixkv-bench-soak-") as tmp:
        outcome = soak_execute.execute(args, binary, Path(tmp), mix)
        args.server_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "server.log", args.server_log)
    context = {
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "working_set": shape,
        "load_average_end": os.getloadavg()[0],
    }
    return soak_execute.conclude(args, outcome, context)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
