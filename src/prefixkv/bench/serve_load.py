"""``prefixkv bench serve``: concurrent clients against the HTTP server, with and without the
prefix cache, side by side in one run.

Two servers are started as subprocesses (the same command a user runs, one of them with
``--no-prefix-cache``), both load while nothing else runs, then each in turn receives the
same shared-system-prompt chat workload from ``--clients`` concurrent clients using the
official openai client, streaming. TTFT is the client's time to the first chunk, which the
server sends with the first token, so it includes the wait in the FIFO queue, as users feel
it. The token hit rate is cached prompt tokens / prompt tokens, from the responses' usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from prefixkv.bench.workloads import Request, chat_workload
from prefixkv.cli.options import add_option, parse_bytes

SETTINGS = {"prefix cache": [], "no prefix cache": ["--no-prefix-cache"]}


@dataclass(frozen=True)
class Reply:
    text: str
    ttft: float
    latency: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Phase:
    """One setting's run: its replies in workload order and the wall time of the run."""

    replies: list[Reply]
    seconds: float

    def summary(self) -> dict[str, float]:
        ttfts = sorted(r.ttft for r in self.replies)
        prompt = sum(r.prompt_tokens for r in self.replies)
        return {
            "requests": len(self.replies),
            "seconds": self.seconds,
            "requests_per_s": len(self.replies) / self.seconds,
            "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p99_s": percentile(ttfts, 99),
            "token_hit_rate": sum(r.cached_tokens for r in self.replies) / prompt,
            "output_tokens_per_s": sum(r.completion_tokens for r in self.replies) / self.seconds,
        }


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks of a sorted, non-empty list."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class ServerUnderTest:
    """``prefixkv serve`` in a subprocess on a free loopback port, logging to a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        # Only what we pass: a PREFIXKV_API_KEY of the caller would lock our clients out.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFIXKV_")}
        if "PREFIXKV_CACHE_DIR" in os.environ:
            env["PREFIXKV_CACHE_DIR"] = os.environ["PREFIXKV_CACHE_DIR"]
        command = [sys.executable, "-m", "prefixkv.cli", "serve", "--port", str(self.port)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*command, "--log-level", "warning", *args], stdout=out, stderr=out, env=env
            )

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server failed to start:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def ask(api: openai.AsyncOpenAI, model: str, request: Request, max_tokens: int) -> Reply:
    messages: Any = request.chat()  # plain dicts; the client's TypedDicts are the same shape
    start = time.perf_counter()
    stream = await api.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    first, parts, usage = 0.0, [], None
    async for chunk in stream:
        first = first or time.perf_counter() - start
        parts += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    if usage is None or usage.prompt_tokens_details is None:
        raise RuntimeError("the server sent no usage")
    return Reply(
        text="".join(parts),
        ttft=first,
        latency=time.perf_counter() - start,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.prompt_tokens_details.cached_tokens or 0,
        completion_tokens=usage.completion_tokens,
    )


async def drive(
    url: str, model: str, workload: list[Request], clients: int, max_tokens: int
) -> Phase:
    """``clients`` concurrent clients; client i sends requests i, i + clients, ... in turn."""
    replies: dict[int, Reply] = {}
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600.0
    ) as api:
        await ask(api, model, Request((("user", "Hello!"),), "warmup"), 1)

        async def client(first: int) -> None:
            for i in range(first, len(workload), clients):
                replies[i] = await ask(api, model, workload[i], max_tokens)

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        seconds = time.perf_counter() - start
    return Phase([replies[i] for i in range(len(workload))], seconds)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefixkv bench serve", description=__doc__)
    add_option(p, "--model", "model spec", default="smollm2")
    add_option(p, "--clients", "concurrent clients", type=int, default="8")
    add_option(p, "--requests-per-client", "requests each client sends", type=int, default="2")
    add_option(p, "--max-tokens", "tokens per reply", type=int, default="16")
    add_option(p, "--cache-bytes", "prefix cache size", type=parse_bytes, default="256MiB")
    add_option(p, "--block-size", "tokens per cache block", type=int, default="16")
    add_option(p, "--out", "JSON results file", type=Path, default="results/serve_load.json")
    return p


def report(args: argparse.Namespace, phases: dict[str, Phase]) -> dict[str, Any]:
    lines = [f"{'setting':<16} {'req/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'hit rate':>9}"]
    for name, phase in phases.items():
        s = phase.summary()
        lines.append(
            f"{name:<16} {s['requests_per_s']:>7.2f} {s['ttft_p50_s']:>8.2f}s "
            f"{s['ttft_p99_s']:>8.2f}s {s['token_hit_rate']:>8.1%}"
        )
    texts = [[r.text for r in phase.replies] for phase in phases.values()]
    same = sum(a == b for a, b in zip(*texts, strict=True))
    lines.append(f"identical greedy replies across settings: {same}/{len(texts[0])}")
    print("\n".join(lines), flush=True)
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "settings": {
            n: {**p.summary(), "replies": [asdict(r) for r in p.replies]} for n, p in phases.items()
        },
        "identical_replies": same,
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    workload = chat_workload(args.clients * args.requests_per_client)
    common = ["--model", args.model, "--cache-bytes", str(args.cache_bytes)]
    common += ["--block-size", str(args.block_size), "--max-queue", str(len(workload) + 1)]
    print(
        f"prefixkv bench serve: {args.model}, {args.clients} clients x "
        f"{args.requests_per_client} requests, shared system prompt, max_tokens {args.max_tokens}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="prefixkv-bench-") as logs:
        servers = {
            name: ServerUnderTest([*common, *extra], Path(logs) / f"server{i}.log")
            for i, (name, extra) in enumerate(SETTINGS.items())
        }
        try:
            for server in servers.values():
                server.wait_ready()
            phases = {
                name: asyncio.run(drive(s.url, args.model, workload, args.clients, args.max_tokens))
                for name, s in servers.items()
            }
        finally:
            for server in servers.values():
                server.stop()
    result = report(args, phases)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0
