"""The batch backend in a real server: concurrent requests share forward passes, and what
they did shows in /metrics."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]


def _ask(server: ServerProcess, i: int) -> int:
    reply = server.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": f"Tell me about harbour {i}."}],
            "max_tokens": 24,
            "temperature": 0,
        },
    )
    assert reply.status_code == 200, reply.text
    tokens: int = reply.json()["usage"]["completion_tokens"]
    return tokens


def _idle_metrics(server: ServerProcess) -> dict[str, float]:
    """The server's metrics once no request runs: the session's server is shared, and a
    request an earlier test abandoned may still be finishing its step (one token of it
    once counted here, on a loaded machine)."""
    deadline = time.monotonic() + 60
    while (found := server.metrics())[
        "prefixkv_num_requests_running"
    ] and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_concurrent_requests_share_steps(tiny_server: ServerProcess) -> None:
    before = _idle_metrics(tiny_server)
    with ThreadPoolExecutor(8) as pool:
        generated = sum(pool.map(lambda i: _ask(tiny_server, i), range(8)))
    after = tiny_server.metrics()

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    steps, sequences = grew("prefixkv_batch_size_count"), grew("prefixkv_batch_size_sum")
    assert steps > 0 and sequences / steps > 1.5  # most steps served several requests
    assert grew("prefixkv_step_generated_tokens_total") == generated
    assert grew("prefixkv_step_tokens_sum") >= generated
    assert after["prefixkv_num_requests_running"] == 0
    assert "prefixkv_num_preemptions_total" in after
    assert tiny_server.stats()["pinned_blocks"] == 0
