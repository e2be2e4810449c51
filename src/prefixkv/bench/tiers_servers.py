"""Cases (c) and (d) of ``prefixkv bench tiers``, on real ``prefixkv serve`` processes, and
the bench's own ``redis-server``.

(c) *restart*: per round, a server on an empty ``--disk-cache`` directory answers one
question about a fresh document (the *cold* first request: everything computed), and is
stopped (SIGTERM: queued blocks are written first); a new server on the same directory
answers another question about it (the *warm* first request: the document's blocks come from
disk), then the cold one's question again, whose reply must be identical. Neither server is
warmed up: both are first requests after a start. The files were just written, so the page
cache holds them.

(d) *replicas*: two servers, A and B, with ``--redis-url`` on one ``redis-server`` (records
sealed with one ``--tier-key-file``, as replicas sharing a Redis must) and no disk tier,
both warmed up. Per round: A answers a question about a fresh document X (and
writes its blocks to Redis); once Redis holds them, B answers the same prompt (hit from
Redis) and the same question about another fresh document Y of the same size (cold), in
alternating order. B's reply on X must be A's.

TTFT is measured by a streaming client (time to the first chunk with text).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from prefixkv.bench import servers, workloads
from prefixkv.bench.processes import stop_process
from prefixkv.bench.serve_client import WARMUP, Reply, ask
from prefixkv.bench.stats import percentile
from prefixkv.bench.tiers_workset import long_document, with_question
from prefixkv.tiers.key import write_key_file

RESTART_TARGET = 8.0  # warm first request >= 8x faster than a cold start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a loopback port (``port``, else a free one), no
    persistence; ``options``: more ``redis-server`` arguments (``--maxmemory 64mb``...)."""

    def __init__(
        self, binary: str, workdir: Path, port: int | None = None, options: tuple[str, ...] = ()
    ) -> None:
        import redis

        self.port = free_port() if port is None else port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(workdir), "--logfile", str(self.log)]
        command += options
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.ping()
                break
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start; see {self.log}") from None
                time.sleep(0.05)

    def flush(self) -> None:
        self.client.flushall()

    def keys(self) -> int:
        return int(self.client.dbsize())

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def stop(self) -> None:
        self.client.close()
        stop_process(self.process, 30)


def redis_binary(given: str) -> str | None:
    return shutil.which(given)


ADMIN_KEY = "prefixkv-bench-admin"
"""The one key of every replica (on loopback, for this bench only): requests are the admin's
tenant, which is part of a cache namespace, so replicas and restarts share records only if
they share the key."""
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


class Replica:
    """``python -m prefixkv.cli serve`` on a free loopback port, logging to a file. It has the
    admin key ``ADMIN_KEY`` (in its environment), which every request of the bench sends: the
    tier figures of ``/v1/cache/stats`` are a whole-cache view."""

    def __init__(self, model: str, flags: list[str], log: Path) -> None:
        self.model = model
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log
        command = [sys.executable, "-m", "prefixkv.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", self.url.rsplit(":", 1)[1], "--model", model]
        command += ["--log-level", "warning", *flags]
        env = {**servers.server_env("prefixkv"), "PREFIXKV_ADMIN_KEY": ADMIN_KEY}
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.started = time.monotonic()

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds from start until /health answers 200."""
        while time.monotonic() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited:\n{self.log.read_text(errors='replace')[-3000:]}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s; log: {self.log}")

    def ask(self, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        request = workloads.Request(tuple((m["role"], m["content"]) for m in messages), "tiers")

        async def one() -> Reply:
            async with openai.AsyncOpenAI(
                base_url=self.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=600.0
            ) as api:
                return await ask(api, self.model, request, max_tokens)

        return asyncio.run(one())

    def tiers(self) -> list[dict[str, Any]]:
        response = httpx.get(
            self.url + "/v1/cache/stats",
            headers=ADMIN_HEADERS,
            timeout=30.0,
        )
        response.raise_for_status()
        tiers: list[dict[str, Any]] = response.json()["tiers"]
        return tiers

    def stop(self) -> int:
        return stop_process(self.process, 120)


def _reply_row(reply: Reply) -> dict[str, Any]:
    return {
        "ttft_ms": 1e3 * reply.ttft,
        "prompt_tokens": reply.prompt_tokens,
        "cached_tokens": reply.cached_tokens,
        "text": reply.text,
    }


def run_restart(engine: Any, args: Any, common: list[str], tmp: Path, bar: Any) -> dict[str, Any]:
    """Case (c); ``common``: flags every server gets."""
    rounds: list[dict[str, Any]] = []
    for r in range(args.restarts):
        doc = long_document(engine, 60_000 + r, args.prefix_tokens)
        cold_q = with_question(doc, "Which town is named first in the document?")
        warm_q = with_question(doc, "Which trade is named last in the document?")
        steady_q = with_question(doc, "Which year is named last in the document?")
        directory = tmp / f"restart-{r}"
        shutil.rmtree(directory, ignore_errors=True)
        flags = [*common, "--disk-cache", str(directory)]
        first = Replica(args.model, flags, tmp / f"restart-{r}-cold.log")
        try:
            cold_load = first.wait_ready()
            cold = first.ask(cold_q, args.max_tokens)
        finally:
            status = first.stop()
        bar.update(1)
        again = Replica(args.model, flags, tmp / f"restart-{r}-warm.log")
        try:
            warm_load = again.wait_ready()
            warm = again.ask(warm_q, args.max_tokens)
            repeat = again.ask(cold_q, args.max_tokens)
            steady = again.ask(steady_q, args.max_tokens)
            tiers = again.tiers()
        finally:
            status = max(status, again.stop())
        bar.update(1)
        rounds.append(
            {
                "cold": _reply_row(cold),
                "warm": _reply_row(warm),
                "warm_later": _reply_row(steady),
                "load_s": {"cold": cold_load, "warm": warm_load},
                "identical": repeat.text == cold.text,
                "exit_status": status,
                "tiers": tiers,
            }
        )
    cold_ms = [r["cold"]["ttft_ms"] for r in rounds]
    warm_ms = [r["warm"]["ttft_ms"] for r in rounds]
    later_ms = [r["warm_later"]["ttft_ms"] for r in rounds]
    speedup = percentile(cold_ms, 50) / percentile(warm_ms, 50)
    return {
        "rounds": rounds,
        "cold_ttft_p50_ms": percentile(cold_ms, 50),
        "cold_ttft_p99_ms": percentile(cold_ms, 99),
        "warm_ttft_p50_ms": percentile(warm_ms, 50),
        "warm_ttft_p99_ms": percentile(warm_ms, 99),
        "warm_later_ttft_p50_ms": percentile(later_ms, 50),
        "speedup": speedup,
        "identical": sum(r["identical"] for r in rounds),
        "target": RESTART_TARGET,
        "met": speedup >= RESTART_TARGET,
    }


def restart_line(s: dict[str, Any]) -> str:
    first = s["rounds"][0]
    n = len(s["rounds"])
    return (
        f"tiers restart   first request, {first['warm']['cached_tokens']}/"
        f"{first['warm']['prompt_tokens']} tokens cached on disk, n={n}: warm TTFT p50 "
        f"{s['warm_ttft_p50_ms']:7.1f} ms p99 {s['warm_ttft_p99_ms']:7.1f} ms  cold start p50 "
        f"{s['cold_ttft_p50_ms']:7.1f} ms p99 {s['cold_ttft_p99_ms']:7.1f} ms  "
        f"{s['speedup']:.1f}x faster (target >= {s['target']:.0f}x: "
        f"{'met' if s['met'] else 'NOT met'})  identical={s['identical']}/{n}  "
        f"server ready in {first['load_s']['warm']:.1f} s; its third request (RAM hit, "
        f"process warm) p50 {s['warm_later_ttft_p50_ms']:.1f} ms"
    )


def _wait_for_keys(redis: RedisServer, before: int, timeout: float = 60.0) -> int:
    """Wait until Redis holds more keys than ``before`` and the count holds still for 0.3 s."""
    deadline = time.monotonic() + timeout
    last, since = redis.keys(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = redis.keys()
        if now != last:
            last, since = now, time.monotonic()
        elif now > before and time.monotonic() - since >= 0.3:
            return now
    return last


def run_replicas(
    engine: Any, args: Any, common: list[str], redis: RedisServer, tmp: Path, bar: Any
) -> dict[str, Any]:
    """Case (d)."""
    redis.flush()
    key_file = tmp / "replicas.key"  # Redis is shared: the replicas seal their records
    key_file.unlink(missing_ok=True)
    write_key_file(key_file)
    flags = [*common, "--redis-url", redis.url, "--tier-key-file", str(key_file)]
    a = Replica(args.model, flags, tmp / "replica-a.log")
    b = Replica(args.model, flags, tmp / "replica-b.log")
    rounds: list[dict[str, Any]] = []
    try:
        a.wait_ready()
        b.wait_ready()
        for replica in (a, b):
            replica.ask(WARMUP.chat(), args.max_tokens)
        for r in range(args.replica_rounds):
            hit_doc = long_document(engine, 70_000 + r, args.prefix_tokens)
            cold_doc = long_document(engine, 80_000 + r, args.prefix_tokens)
            before = redis.keys()
            first = a.ask(hit_doc, args.max_tokens)
            keys = _wait_for_keys(redis, before)
            if r % 2:
                cold = b.ask(cold_doc, args.max_tokens)
                hit = b.ask(hit_doc, args.max_tokens)
            else:
                hit = b.ask(hit_doc, args.max_tokens)
                cold = b.ask(cold_doc, args.max_tokens)
            rounds.append(
                {
                    "a": _reply_row(first),
                    "b_hit": _reply_row(hit),
                    "b_cold": _reply_row(cold),
                    "redis_keys": keys,
                    "identical": hit.text == first.text,
                }
            )
            bar.update(1)
        tiers = {"a": a.tiers(), "b": b.tiers()}
        memory = redis.used_memory()
    finally:
        status = max(a.stop(), b.stop())
    hit_ms = [r["b_hit"]["ttft_ms"] for r in rounds]
    cold_ms = [r["b_cold"]["ttft_ms"] for r in rounds]
    return {
        "rounds": rounds,
        "hit_ttft_p50_ms": percentile(hit_ms, 50),
        "hit_ttft_p99_ms": percentile(hit_ms, 99),
        "cold_ttft_p50_ms": percentile(cold_ms, 50),
        "cold_ttft_p99_ms": percentile(cold_ms, 99),
        "speedup": percentile(cold_ms, 50) / percentile(hit_ms, 50),
        "identical": sum(r["identical"] for r in rounds),
        "tiers": tiers,
        "redis_used_memory": memory,
        "exit_status": status,
    }


def replicas_line(s: dict[str, Any]) -> str:
    first = s["rounds"][0]
    n = len(s["rounds"])
    redis: dict[str, Any] = next((t for t in s["tiers"]["b"] if t["tier"] == "redis"), {})
    return (
        f"tiers replicas  B after A, {first['b_hit']['cached_tokens']}/"
        f"{first['b_hit']['prompt_tokens']} tokens from Redis, n={n}: hit TTFT p50 "
        f"{s['hit_ttft_p50_ms']:7.1f} ms p99 {s['hit_ttft_p99_ms']:7.1f} ms  cold B p50 "
        f"{s['cold_ttft_p50_ms']:7.1f} ms p99 {s['cold_ttft_p99_ms']:7.1f} ms  "
        f"{s['speedup']:.1f}x faster  identical to A={s['identical']}/{n}  "
        f"B redis hits {redis.get('hit_blocks', 0)} blocks, errors {redis.get('errors', 0)}"
    )
