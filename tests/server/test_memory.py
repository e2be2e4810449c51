"""500 requests through the batch backend: the server's memory stays flat, the pool never
passes its capacity, and nothing stays pinned, whether clients finish or disconnect."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import pytest

from prefixkv.bench.soak_sample import resident_bytes

from .conftest import TINY_ARGS
from .harness import ServerProcess, wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow]

CLIENTS, WAVES = 16, 5  # 5 waves of 100 requests
PER_WAVE = 100
CACHE_BYTES = 1 << 20
ADMIN = "admin-key-of-the-memory-test"  # the pool-wide figures are the admin's view


def _settled(server: ServerProcess) -> bool:
    """Nothing running or pinned, and the pool's blocks conserved: each one free or cached."""
    stats = server.stats()
    running = server.metrics()["prefixkv_num_requests_running"]
    conserved = stats["used_blocks"] + stats["free_blocks"] == stats["total_blocks"]
    return running == 0 and stats["pinned_blocks"] == 0 and conserved


async def _wave(server: ServerProcess, wave: int) -> None:
    """``PER_WAVE`` requests from ``CLIENTS`` concurrent clients; one in ten streams and
    hangs up after its first chunk."""
    rng = random.Random(wave)
    queue = list(range(PER_WAVE))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            body = {
                "messages": [
                    {"role": "system", "content": f"Shop {i % 7} sells bicycles. " * 8},
                    {"role": "user", "content": f"Question {wave}-{i}: " + "x" * rng.randrange(40)},
                ],
                "max_tokens": rng.randrange(1, 24),
            }
            if i % 10 == 0:  # a client that disconnects mid-stream
                async with http.stream(
                    "POST", "/v1/chat/completions", json={**body, "stream": True}
                ) as reply:
                    async for _ in reply.aiter_lines():
                        break
                continue
            reply = await http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text

    async with httpx.AsyncClient(
        base_url=server.url, headers=server.headers(), timeout=120.0
    ) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))


def test_memory_is_flat_over_500_requests(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["--model", str(tiny_model_dir), *TINY_ARGS, "--cache-bytes", str(CACHE_BYTES)]
    args += ["--admin-key", ADMIN]
    server = ServerProcess(args, tmp_path / "log", api_key=ADMIN).wait_ready()
    try:
        asyncio.run(_wave(server, 0))  # warm-up: allocator pools, the pool's pages
        baseline = resident_bytes(server.process.pid)
        for wave in range(1, WAVES):
            asyncio.run(_wave(server, wave))
            # Once the hung-up streams have stopped too: every block free or cached, none lost.
            assert wait_for(lambda: _settled(server)), server.stats()
            stats = server.stats()
            assert stats["capacity_bytes"] <= CACHE_BYTES  # the pool: within --cache-bytes
            block_bytes = stats["capacity_bytes"] // stats["total_blocks"]
            assert stats["used_bytes"] == stats["used_blocks"] * block_bytes
        growth = resident_bytes(server.process.pid) - baseline
        # A leak of even one small object per request would show over 400 requests.
        assert growth < 16 << 20, f"RSS grew by {growth / 2**20:.1f} MiB over 400 requests"
        metrics = server.metrics()
        assert metrics["prefixkv_num_requests_running"] == 0
        assert metrics["prefixkv_num_preemptions_total"] > 0  # the small pool did preempt
    finally:
        assert server.stop() == 0, server.output()
