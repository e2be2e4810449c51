"""``prefixkv bench soak``: start the redis-server and the server, run, stop them; then the
verdict, the printed summary and the files."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefixkv.bench import soak_report
from prefixkv.bench.soak import redis_options, server_flags
from prefixkv.bench.soak_run import RedisState, Run, Schedule, Server, soak
from prefixkv.bench.soak_sample import LogScan, Sample
from prefixkv.bench.soak_traffic import Mix
from prefixkv.bench.soak_verdict import Finish, Limits, RedisEvents, verdict
from prefixkv.bench.tiers_servers import RedisServer, Replica
from prefixkv.tiers.key import write_key_file


@dataclass(frozen=True)
class Outcome:
    run: Run
    redis: RedisEvents | str  # the restart, or why there was none
    finish: Finish
    log: LogScan  # the whole log, read after the server stopped
    flags: list[str]


def schedule(args: argparse.Namespace) -> Schedule:
    duration = 60.0 * args.minutes
    return Schedule(
        duration, args.interval, args.quiet_every, args.redis_stop_at * duration, args.redis_down
    )


def show(sample: Sample, previous: Sample | None) -> None:
    print(soak_report.line(sample, previous), flush=True)


def execute(args: argparse.Namespace, binary: str, tmp: Path, mix: Mix) -> Outcome:
    """Start a redis-server and the server in ``tmp``, soak, stop both. The server's log is
    ``tmp / "server.log"``."""
    workdir = tmp / "redis"
    state = RedisState(
        RedisServer(binary, workdir, options=redis_options(args)),
        lambda port: RedisServer(binary, workdir, port, redis_options(args)),
    )
    key_file = tmp / "tier.key"
    write_key_file(key_file)
    flags = server_flags(args, tmp / "disk", state.server.url, key_file)
    log = tmp / "server.log"
    try:
        server = Replica(args.model, flags, log)
        try:
            load = server.wait_ready()
            print(f"# server ready in {load:.1f} s (pid {server.process.pid})", flush=True)
            print(soak_report.TABLE_HEADER, flush=True)
            target = Server(server.url, server.process.pid, log)
            run = asyncio.run(
                soak(target, mix, schedule(args), state, args.clients, args.seed, show)
            )
            events = state.events
            if isinstance(events, RedisEvents) and state.up:
                events = events._replace(keys_at_end=state.server.keys())
        finally:
            status = server.stop()
    finally:
        state.server.stop()
    scan = LogScan(log)
    scan.feed()
    return Outcome(run, events, Finish(status, scan.errors, run.aborted), scan, flags)


def limits(args: argparse.Namespace) -> Limits:
    return Limits(
        warmup_s=args.warmup * 60.0 * args.minutes,
        rss_growth_mib=args.rss_growth_mib,
        rss_slope_mib_per_hour=args.rss_slope_mib,
        fd_growth=args.fd_growth,
        fd_slope_per_hour=args.fd_slope,
        recovery_s=args.recovery,
        stall_s=args.stall,
    )


def conclude(args: argparse.Namespace, outcome: Outcome, context: dict[str, Any]) -> int:
    """Judge, print the summary, write the files; the exit status (0: every target met)."""
    samples = outcome.run.samples
    if not samples:
        print(f"# FAILED: no sample was taken ({outcome.run.aborted})")
        return 1
    targets = verdict(samples, outcome.redis, outcome.finish, limits(args))
    tally, log = outcome.run.tally, outcome.log
    extra = {
        "server_flags": outcome.flags,
        "limits": limits(args)._asdict(),
        "redis": outcome.redis._asdict()
        if isinstance(outcome.redis, RedisEvents)
        else outcome.redis,
        "finish": outcome.finish._asdict(),
        "clients": {
            "served_by_kind": dict(tally.served),
            "disconnects": tally.disconnects,
            "errors_by_kind": dict(tally.errors),
            "first_errors": tally.first_errors,
        },
        "log": {
            "errors": log.errors,
            "redis_down": log.redis_down,
            "redis_back": log.redis_back,
            "error_lines": log.error_lines,
        },
    }
    report = soak_report.report_dict(context, samples, targets, extra)
    for text in soak_report.summary_lines(report, samples):
        print(text)
    soak_report.write(report, samples, outcome.redis, args.out, args.chart)
    return 0 if report["met"] else 1
