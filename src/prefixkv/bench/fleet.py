"""``prefixkv bench fleet``: N ``prefixkv serve`` replicas sharing one Redis (or, with
``--shared-tier none``, nothing: each its own RAM), behind vLLM's
router (:mod:`prefixkv.bench.router`), the same multi-document traffic routed once per
policy: ``cache_aware`` (the router's own approximate prefix tree), ``round_robin``, and
``kv_aware`` (the router's index built from the replicas' KV events, ``serve --kv-events``).

Each replica's RAM cache (``--cache-bytes``) holds fewer documents than the workload asks
about, so a replica sent every document (round-robin) evicts them before their next
question, while routing by prefix splits them over the replicas. Before each policy every
replica's cache is emptied and Redis flushed, and a fresh router starts with an empty tree.
The workload is ``bench serve``'s document questions (:func:`~prefixkv.bench.workloads.
document_qa_workload`): each client asks about one document. The defaults: 5 documents of
about 740 prompt tokens (SmolLM2), 4.6 MB of float32 KV per 100 tokens, so a replica's
112 MiB holds 3 of them and two replicas hold all 5 only when each gets its own; 5 clients,
an odd count, so that round-robin does not keep a client on one replica by accident (with an
even count, request ``k * clients + c`` would always land on replica ``c % 2``).

Then the kill test: the cache-aware router again, and the last replica killed (SIGKILL)
once a third of the requests are done; the router retries requests it cannot connect, the
client retries replies cut off mid-stream (:mod:`prefixkv.bench.fleet_client`); every
failed attempt is counted, and a request is lost only if all its attempts fail.

Prints per phase: token hit rate (all tiers, and RAM only) from the replicas, TTFT p50/p99
and req/s at the client; then the cache-aware / round-robin ratios and the targets. Exits 0
when both targets are met (see :mod:`prefixkv.bench.fleet_report`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefixkv.bench import fleet_report
from prefixkv.bench.fleet_client import drive_retrying
from prefixkv.bench.fleet_servers import Fleet, FleetSpec, NothingShared, SharedRedis, SharedTier
from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.results_page import command_of
from prefixkv.bench.router import (
    CACHE_AWARE,
    INSTALL,
    POLICIES,
    ROUND_ROBIN,
    RouterConfig,
    RouterProcess,
    router_binary,
)
from prefixkv.bench.serve_client import WARMUP
from prefixkv.bench.tiers_servers import ADMIN_HEADERS, free_port, redis_binary
from prefixkv.bench.workloads import Request, document_qa_workload
from prefixkv.cli.options import add_option, one_of, parse_bytes, positive_int

KILL_PHASE = "kill-test"


def policy_list(text: str) -> list[str]:
    """A comma list of router policies; cache_aware and round_robin must be among them (the
    ratio compares them). ValueError names what is wrong."""
    names = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known: {', '.join(POLICIES)}")
    if CACHE_AWARE not in names or ROUND_ROBIN not in names:
        raise ValueError(f"--policies must include {CACHE_AWARE} and {ROUND_ROBIN}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefixkv bench fleet", description=__doc__)
    add_option(p, "--model", "model spec", default="smollm2")
    add_option(p, "--replicas", "prefixkv serve replicas", type=positive_int, default="2")
    add_option(p, "--cache-bytes", "each replica's RAM cache", type=parse_bytes, default="112MiB")
    add_option(p, "--block-size", "tokens per cache block", type=positive_int, default="16")
    add_option(p, "--threads", "torch threads per replica", type=positive_int, default="1")
    add_option(p, "--policies", "router policies, in order", type=policy_list,
               default=",".join(POLICIES))  # fmt: skip
    add_option(p, "--documents", "distinct documents", type=positive_int, default="5")
    add_option(p, "--sentences", "sentences per document", type=positive_int, default="36")
    add_option(p, "--clients", "concurrent clients", type=positive_int, default="5")
    add_option(p, "--requests-per-client", "questions per client", type=positive_int, default="4")
    add_option(p, "--max-tokens", "tokens per reply", type=positive_int, default="8")
    add_option(p, "--attempts", "client attempts per request", type=positive_int, default="3")
    add_option(p, "--redis-server", "redis-server binary", default="redis-server")
    add_option(p, "--shared-tier", "what the replicas share below RAM: a Redis, or nothing "
               "(each replica's RAM alone: what routing earns without a shared tier)",
               type=one_of(["redis", "none"]), default="redis")  # fmt: skip
    add_option(p, "--out", "results JSON", type=Path, default="results/fleet.json")
    return p


def run_phase(
    fleet: Fleet,
    config: RouterConfig,
    args: argparse.Namespace,
    work: list[Request],
    kill_after: int | None,
) -> dict[str, Any]:
    """One phase: caches emptied, a fresh router with ``config``, the workload through it;
    with ``kill_after``, the last replica is killed once that many requests are done (the
    kill test; its counters are lost with it)."""
    fleet.reset()
    binary = router_binary()
    assert binary is not None, "main() checks the router is installed"
    name = config.policy if kill_after is None else KILL_PHASE
    log = fleet.workdir / f"router-{name}.log"
    router = RouterProcess(binary, config, log, free_port(), free_port())
    try:
        router.wait_ready(ADMIN_HEADERS)
        before = fleet.counts()
        outcomes, seconds = asyncio.run(
            drive_retrying(router.url, args.model, work, args.clients, args.max_tokens,
                           args.attempts, ADMIN_HEADERS, kill_at(fleet, kill_after))
        )  # fmt: skip
        after = fleet.counts()
        retries = router.retries()
    finally:
        router.stop()
    counts = [a.minus(b) if a.prompt_tokens else a for a, b in zip(after, before, strict=True)]
    summary = fleet_report.summarize(name, outcomes, seconds, counts) | {"router_retries": retries}
    print(fleet_report.line(summary), flush=True)
    return summary


def kill_at(fleet: Fleet, after: int | None) -> Callable[[int], None]:
    """``on_done`` for the driver: SIGKILL the last replica when ``after`` requests are done
    (never when ``after`` is None)."""

    def on_done(done: int) -> None:
        victim = fleet.replicas[-1].process
        if after is not None and done == after and victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            print(f"# killed replica {len(fleet.replicas) - 1} after {done} requests", flush=True)

    return on_done


def warm_up(fleet: Fleet) -> None:
    """One request to each replica directly: first calls pay one-off costs."""
    for replica in fleet.replicas:
        replica.ask(WARMUP.chat(), 4)


def run_all(fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    work = document_qa_workload(
        args.clients, args.requests_per_client, args.documents, args.sentences
    )
    model = fleet.replicas[0].model
    base = RouterConfig(CACHE_AWARE, tuple(fleet.workers), args.block_size, model)
    phases = []
    for policy in args.policies:
        config = RouterConfig(policy, base.workers, base.block_size, base.model)
        phases.append(run_phase(fleet, config, args, work, None))
    kill = run_phase(fleet, base, args, work, max(1, len(work) // 3))
    by_phase = {s["phase"]: s for s in phases}
    ratio_of = fleet_report.ratios(by_phase)
    return {"phases": phases, "kill": kill, "ratios": ratio_of,
            "targets": fleet_report.targets(by_phase, kill)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    binary = router_binary()
    redis = redis_binary(args.redis_server) if args.shared_tier == "redis" else None
    if binary is None or (redis is None and args.shared_tier == "redis"):
        missing = "vllm-router: " + INSTALL if binary is None else f"{args.redis_server}"
        print(f"prefixkv bench fleet: not installed: {missing}")
        return 2
    info = machine_info()
    print(describe(info), flush=True)
    spec = FleetSpec(args.model, args.replicas, args.cache_bytes, args.block_size, args.threads)
    with tempfile.TemporaryDirectory(prefix="prefixkv-fleet-") as name:
        shared: SharedTier = NothingShared() if redis is None else SharedRedis(redis, Path(name))
        fleet = Fleet(spec, shared, Path(name))
        try:
            print(f"# {args.replicas} replicas ready in {fleet.wait_ready():.1f} s", flush=True)
            warm_up(fleet)
            result = run_all(fleet, args)
        finally:
            codes = fleet.stop()
    print(f"# ratios (cache_aware / round_robin): {result['ratios']}")
    for target in result["targets"]:
        print(f"# target {'met' if target['met'] else 'MISSED'}: {target['name']}: "
              f"{target['measured']}")  # fmt: skip
    recorded = {k: str(v) for k, v in vars(args).items()}
    out = {"machine": info, "args": recorded, "date": time.strftime("%Y-%m-%d"), **result}
    out["replica_exit_codes"] = codes
    # recorded, so a results file under another name still says what made it
    out["command"] = command_of("fleet", out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"# wrote {args.out}")
    return 0 if all(t["met"] for t in result["targets"]) else 1
