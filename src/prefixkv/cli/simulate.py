"""``prefixkv simulate``: a request log replayed at other cache sizes and policies (see
:mod:`prefixkv.whatif`)."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefixkv.cli.options import add_option, one_of, parse_bytes, positive_float
from prefixkv.cli.progress import Progress
from prefixkv.cli.setup import CommandError

if TYPE_CHECKING:
    from prefixkv.whatif.records import LoggedRequest


def size_list(text: str) -> list[int]:
    """``256MiB,1GiB``: sizes in bytes, each as :func:`parse_bytes` reads it."""
    return [parse_bytes(part) for part in text.split(",")]


def name_list(choices: list[str]) -> object:
    pick = one_of(choices)

    def parse(text: str) -> list[str]:
        return [pick(part.strip()) for part in text.split(",")]

    return parse


def add_parser(commands: Any) -> None:
    """Add ``simulate`` to ``commands`` (the ``prefixkv`` subparsers)."""
    p = commands.add_parser(
        "simulate", help="replay a request log (serve --request-log) at other cache sizes"
    )
    add_option(p, "--log", "the request log to replay", required=True)
    add_option(
        p, "--cache-bytes", "RAM cache sizes to try, comma-separated", type=size_list,
        default="256MiB,1GiB,4GiB",
    )  # fmt: skip
    add_option(
        p, "--policy", "eviction policies to try, comma-separated",
        type=name_list(["lru", "lfu"]), default="lru",
    )  # fmt: skip
    add_option(
        p, "--disk-cache-bytes", "disk tier sizes to try below each RAM size (default: none)",
        type=size_list,
    )  # fmt: skip
    add_option(
        p, "--block-bytes",
        "KV bytes per block (default: what the log's server used)", type=parse_bytes,
    )  # fmt: skip
    add_option(
        p, "--model",
        "a model folder (config.json) whose float32 KV gives the bytes per block (instead "
        "of --block-bytes)",
    )  # fmt: skip
    add_option(
        p, "--prefill-rate",
        "prompt tokens prefilled per second, for the TTFT estimate (default: measured from "
        "the log's TTFTs)", type=positive_float,
    )  # fmt: skip
    add_option(p, "--plot", "the PNG curve to write", default="simulate.png")
    p.set_defaults(run=simulate_command)


def read_requests(path: Path) -> list[LoggedRequest]:
    """The records of the request log at ``path``; CommandError naming the file (or the
    line) when it cannot be read, holds a bad line, or holds no request."""
    from prefixkv.whatif.records import LogError, read_log

    try:
        requests = list(read_log(path))
    except OSError as exc:
        raise CommandError(f"--log {path}: {exc.strerror}") from exc
    except LogError as exc:
        raise CommandError(str(exc)) from exc
    if not requests:
        raise CommandError(f"--log {path} holds no request")
    return requests


def simulate_command(args: argparse.Namespace) -> int:
    from prefixkv.whatif.replay import CacheConfig, Replay
    from prefixkv.whatif.report import PrefillRate, measured_rate, plot, served, table

    requests = read_requests(Path(args.log))
    block_bytes = _block_bytes(args, requests[0].block_size, requests[0].block_bytes)
    disks = args.disk_cache_bytes or [None]
    configs = [
        CacheConfig(ram, policy, disk)
        for ram, policy, disk in itertools.product(args.cache_bytes, args.policy, disks)
    ]
    try:
        replays = [Replay(config, block_bytes) for config in configs]
    except ValueError as exc:
        raise CommandError(f"--cache-bytes: {exc}") from exc
    progress = Progress(len(requests) * len(replays), "replaying")
    for replay in replays:
        for request in requests:
            replay.feed(request)
            progress.advance()
    progress.close()
    results = [replay.result() for replay in replays]
    rate = measured_rate(requests)
    if args.prefill_rate:
        rate = PrefillRate(args.prefill_rate, "given with --prefill-rate")
    hit, total = served(requests)
    served_rate = hit / total if total else None
    print(f"{len(requests)} requests, {total:,} prompt tokens, blocks of {block_bytes:,} bytes")
    if served_rate is not None:
        print(f"served hit rate: {100 * served_rate:.1f}% ({hit:,} cached tokens)")
    print(table(results, rate))
    if rate is not None:
        print(f"prefill rate: {rate.tokens_per_second:,.0f} tokens/s, {rate.source}")
    plot(results, Path(args.plot), served_rate)
    print(f"curve: {args.plot}", file=sys.stderr)
    return 0


def _block_bytes(args: argparse.Namespace, block_size: int, logged: int) -> int:
    if args.block_bytes and args.model:
        raise CommandError("give --block-bytes or --model, not both")
    if args.block_bytes:
        return int(args.block_bytes)
    if args.model:
        return model_block_bytes(args.model, block_size)
    return logged


def model_block_bytes(spec: str, block_size: int) -> int:
    """Bytes of one block of ``block_size`` tokens of float32 KV (what prefixkv's engine
    keeps) for the model folder ``spec``; CommandError for anything else."""
    from prefixkv.extras import require

    require("hf", "prefixkv simulate --model")
    import torch
    from transformers import AutoConfig

    from prefixkv.engine.kvbridge import layout_of

    folder = Path(spec)
    if not (folder / "config.json").is_file():
        raise CommandError(
            f"--model {spec}: not a model folder with config.json (for a GGUF, give "
            "--block-bytes; the log already records the served model's)"
        )
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    return layout_of(config, torch.float32).block_bytes(block_size)
