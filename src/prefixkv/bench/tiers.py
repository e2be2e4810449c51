"""``prefixkv bench tiers``: the lower cache tiers (disk, Redis) against recomputing, RAM
alone and cold starts, on the real model.

Cases (``--cases``, each described in its module):

- ``restore`` (a, :mod:`.tiers_restore`): per 1,000 tokens, getting KV back from RAM, disk
  (page cache warm, and with its pages dropped) and Redis, against a prefill of them;
- ``workset`` (b, :mod:`.tiers_workset`): a working set four times the RAM budget, token hit
  rate and TTFT with RAM only, RAM + disk, RAM + disk + Redis;
- ``restart`` (c, :mod:`.tiers_servers`): the first request after a server restart on a warm
  disk tier, against a cold start;
- ``replicas`` (d, :mod:`.tiers_servers`): two servers sharing one Redis;
- ``compression`` (e, :mod:`.tiers_workset`): the same workload with a disk tier too small
  for it uncompressed, ``--tier-compression`` none, int8, int4.

Redis is a private ``redis-server`` started on a free loopback port (no persistence) and
stopped at the end; without one, the Redis parts are skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefixkv.bench.machine import describe, machine_info
from prefixkv.cli.options import add_option, one_of, positive_float, positive_int

CASES = ("restore", "workset", "restart", "replicas", "compression")
QUICK = {
    "prefix_tokens": 256,
    "repeats": 3,
    "documents": 8,
    "questions": 2,
    "sentences": 8,
    "restarts": 1,
    "replica_rounds": 1,
}


def case_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(CASES)
    for name in names:
        one_of(list(CASES))(name)
    if not names:
        raise ValueError("no cases")
    return [c for c in CASES if c in names]


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise ValueError(f"must be in (0, 1], got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefixkv bench tiers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_option(p, "--model", "model spec", default="smollm2")
    add_option(p, "--cases", f"comma list of {', '.join(CASES)}, or all", type=case_list,
               default="all")  # fmt: skip
    add_option(p, "--quick", "small sizes: a smoke run in a minute or two", action="flag")
    add_option(p, "--block-size", "tokens per cache block", type=positive_int, default="16")
    add_option(p, "--threads", "torch CPU threads, here and in the servers", type=positive_int)
    add_option(p, "--prefix-tokens", "cached prefix of (a), (c), (d)", type=positive_int,
               default="1000")  # fmt: skip
    add_option(p, "--repeats", "rounds of (a)", type=positive_int, default="5")
    add_option(p, "--documents", "documents of (b) and (e)", type=positive_int, default="16")
    add_option(p, "--questions", "questions per document", type=positive_int, default="4")
    add_option(p, "--sentences", "sentences per document (~20 tokens each)", type=positive_int,
               default="24")  # fmt: skip
    add_option(p, "--max-tokens", "tokens per reply", type=positive_int, default="4")
    add_option(p, "--ram-fraction", "RAM budget / working set in (b), (e)", type=fraction,
               default="0.25")  # fmt: skip
    add_option(p, "--small-disk", "disk budget / working set in (b)'s RAM + disk + Redis",
               type=fraction, default="0.5")  # fmt: skip
    add_option(p, "--lower-fraction", "disk budget / uncompressed working set in (e)",
               type=fraction, default="0.5")  # fmt: skip
    add_option(p, "--restarts", "rounds of (c)", type=positive_int, default="5")
    add_option(p, "--replica-rounds", "rounds of (d)", type=positive_int, default="4")
    add_option(p, "--server-cache-bytes", "--cache-bytes of the servers", default="512MiB")
    add_option(p, "--redis-server", "redis-server binary", default="redis-server")
    add_option(p, "--seed", "workload order", type=int, default="0")
    add_option(p, "--out", "JSON results file", type=Path, default="results/tiers.json")
    add_option(p, "--chart", "PNG chart", type=Path, default="results/tiers.png")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = parser()
    if p.parse_args(argv).quick:
        p.set_defaults(**QUICK)
    return p.parse_args(argv)


def _total(args: argparse.Namespace, cases: list[str], redis: bool) -> int:
    """Progress bar steps: restore rounds x paths, requests, server starts, replica rounds."""
    requests = args.documents * args.questions
    steps = {
        "restore": args.repeats * (5 + redis),
        "workset": (2 + redis) * requests,
        "restart": 2 * args.restarts,
        "replicas": args.replica_rounds * redis,
        "compression": 3 * requests,
    }
    return sum(steps[c] for c in cases)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    from prefixkv.bench import tiers_report

    with tempfile.TemporaryDirectory(prefix="prefixkv-bench-tiers-") as tmp:
        report = run(args, Path(tmp))
    tiers_report.write(args, report)
    return 0 if report["identical"] else 1


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    from prefixkv.engine.build import EngineSettings, build

    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe(machine_info()), flush=True)
    settings = EngineSettings(model=args.model, cache="none", block_size=args.block_size)
    engine = build(settings).engine
    engine.generate("Hello", max_tokens=2)  # first calls pay one-off costs
    notes: list[str] = []
    redis = _start_redis(args, tmp, notes)
    try:
        return _run_cases(args, tmp, engine, redis, notes)
    finally:
        if redis is not None:
            redis.stop()


def _run_cases(
    args: argparse.Namespace, tmp: Path, engine: Any, redis: Any, notes: list[str]
) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from prefixkv.bench import tiers_report
    from prefixkv.bench import tiers_restore as restore
    from prefixkv.bench import tiers_servers as srv
    from prefixkv.bench import tiers_workset as workset
    from prefixkv.bench.tiers_seal import seal_costs, seal_line
    from prefixkv.engine.fingerprint import arithmetic, model_fingerprint, serial_attention
    from prefixkv.tiers.key import TierKey

    # the restore cases run the serial engine on this thread
    computed = arithmetic(engine.model, serial_attention(engine.model), torch.get_num_threads())
    ctx = restore.Context(
        engine=engine,
        fingerprint=model_fingerprint(engine.model, engine.layout, computed),
        block_size=args.block_size,
        tmp=tmp,
        redis_url=None if redis is None else redis.url,
        flush_redis=(lambda: None) if redis is None else redis.flush,
        memcpy_bps=restore.measure_memcpy(),
        notes=notes,
        key=TierKey.generate(),
    )
    print(
        f"# memory copy {ctx.memcpy_bps / 1e9:.1f} GB/s; KV "
        f"{engine.layout.bytes_per_token / 1024:.0f} KiB per token, blocks of "
        f"{args.block_size} tokens",
        flush=True,
    )
    report: dict[str, Any] = {"machine": machine_info(), "memcpy_bps": ctx.memcpy_bps,
                              "notes": notes}  # fmt: skip
    common = ["--cache-bytes", args.server_cache_bytes, "--block-size", str(args.block_size)]
    common += ["--threads", str(args.threads)] if args.threads else []
    cases = args.cases
    load_start = _load()
    total = _total(args, cases, redis is not None)
    with tqdm(total=total, desc="bench tiers", unit="step") as bar:
        if "restore" in cases:
            report["restore"] = restore.run_restore(ctx, args.prefix_tokens, args.repeats, bar)
            for row in report["restore"]:
                bar.write(restore.line(row))
            report["seal"] = seal_costs(engine.layout, args.block_size, ctx.key)
            for row in report["seal"]:
                bar.write(seal_line(row))
        if "workset" in cases or "compression" in cases:
            ws = workset.make_workset(ctx, args.documents, args.questions, args.sentences,
                                      args.seed, args.ram_fraction)  # fmt: skip
            bar.write(tiers_report.workset_header(ws, args))
            report["workset_shape"] = tiers_report.workset_shape(ws)
            settings = workset.workset_settings(ctx, ws, args.small_disk)
            if "workset" not in cases:
                settings = settings[:1]  # RAM only: the reference replies
            if "compression" in cases:
                settings += workset.compression_settings(ctx, ws, args.lower_fraction)
            rows = workset.run_settings(ctx, settings, ws, args.max_tokens, bar)
            workset.compare(rows)
            for row in rows:
                bar.write(workset.line(row))
            report["workset"] = [r for r in rows if r["case"] == "workset"]
            report["compression"] = [r for r in rows if r["case"] == "compression"]
        if "restart" in cases:
            report["restart"] = srv.run_restart(engine, args, common, tmp, bar)
            bar.write(srv.restart_line(report["restart"]))
        if "replicas" in cases:
            if redis is None:
                notes.append("replicas skipped: no Redis (see above)")
                report["replicas"] = {"skipped": "no Redis"}
            else:
                report["replicas"] = srv.run_replicas(engine, args, common, redis, tmp, bar)
                bar.write(srv.replicas_line(report["replicas"]))
    report["identical"] = tiers_report.all_identical(report)
    report["load_average"] = {"start": load_start, "end": _load()}
    return report


def _load() -> float | None:
    """The 1-minute load average (other work on the machine skews every figure)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _start_redis(args: argparse.Namespace, tmp: Path, notes: list[str]) -> Any:
    """A private redis-server, or None (with the reason in ``notes``)."""
    import importlib.util

    from prefixkv.bench.tiers_servers import RedisServer, redis_binary

    if importlib.util.find_spec("prefixkv.tiers.redis") is None:
        notes.append("Redis parts skipped: prefixkv.tiers.redis is not on this branch")
        return None
    binary = redis_binary(args.redis_server)
    if binary is None:
        notes.append(f"Redis parts skipped: no {args.redis_server!r} on PATH")
        return None
    return RedisServer(binary, tmp / "redis")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
