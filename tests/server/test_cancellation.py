"""Clients that go away, and the order of service: a stream whose client disconnects stops
generating and unpins its blocks; a queued request whose client left is skipped; requests
are served strictly in order of arrival."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from .harness import ServerProcess, wait_for

# serial: arrivals 0.15 s apart must be served in that order
pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.serial]

SYSTEM = "You are the lighthouse keeper's log. Record every ship and every storm. " * 3
LONG = 2500  # tokens: seconds of generation for the tiny model, if nobody interrupts it


def body(salt: str, user: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "cache_salt": salt,
    }


@contextmanager
def open_stream(server: ServerProcess, request: dict[str, Any], events: int) -> Iterator[None]:
    """A streaming request with ``events`` SSE events read; leaving the block drops the
    connection without reading the rest. (The line iterator is kept, not broken out of:
    abandoning it would already close the connection.)"""
    with (
        httpx.Client(timeout=60.0) as http,
        http.stream("POST", server.url + "/v1/chat/completions", json=request) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        seen = 0
        while seen < events:
            line = next(lines)
            if line.startswith("data: "):
                assert "error" not in json.loads(line[6:])
                seen += 1
        yield
        lines.close()  # type: ignore[attr-defined]  # a generator, typed as an Iterator


def outcomes(server: ServerProcess) -> dict[str, float]:
    samples = server.metrics()
    return {
        outcome: samples.get(f'prefixkv_requests_total{{endpoint="chat",outcome="{outcome}"}}', 0)
        for outcome in ("completed", "stopped", "skipped")
    }


def test_disconnect_mid_stream_stops_generation_and_unpins(tiny_server: ServerProcess) -> None:
    tiny_server.post("/v1/chat/completions", json=body("disconnect", "Warm up.", 2, False))
    before = outcomes(tiny_server)
    generated = tiny_server.metrics()["prefixkv_generation_tokens_total"]
    with open_stream(tiny_server, body("disconnect", "Log tonight.", LONG, True), events=5):
        # The running request holds a lease on the cached system prompt.
        assert tiny_server.stats()["pinned_blocks"] > 0
    assert wait_for(lambda: tiny_server.stats()["pinned_blocks"] == 0, timeout=10)
    assert wait_for(lambda: outcomes(tiny_server)["stopped"] == before["stopped"] + 1)
    # It was stopped, not run to the end: its tokens were never counted as generated.
    assert tiny_server.metrics()["prefixkv_generation_tokens_total"] == generated
    # The server carries on.
    reply = tiny_server.post("/v1/chat/completions", json=body("disconnect", "Next.", 3, False))
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1


def test_queued_request_of_a_vanished_client_is_skipped(
    tiny_server_one_at_a_time: ServerProcess,
) -> None:
    server = tiny_server_one_at_a_time
    before = outcomes(server)
    # The second request waits behind the stream (one may run at a time); its client gives
    # up while it waits.
    with (
        open_stream(server, body("skip", "Hold the worker.", LONG, True), events=2),
        pytest.raises(httpx.ReadTimeout),
    ):
        httpx.post(
            server.url + "/v1/chat/completions",
            json=body("skip", "Too late.", 5, False),
            timeout=httpx.Timeout(60.0, read=0.5),
        )
    assert wait_for(lambda: outcomes(server)["skipped"] == before["skipped"] + 1)
    assert outcomes(server)["completed"] == before["completed"]
    assert wait_for(lambda: server.stats()["pinned_blocks"] == 0)


def test_requests_are_served_in_order_of_arrival(tiny_server: ServerProcess) -> None:
    def timed(i: int) -> tuple[int, float]:
        reply = tiny_server.post("/v1/chat/completions", json=body("fifo", f"Ship {i}.", 20, False))
        assert reply.status_code == 200
        return i, time.monotonic()

    with ThreadPoolExecutor(6) as pool:
        with open_stream(tiny_server, body("fifo", "Hold the worker.", LONG, True), events=2):
            futures = []
            for i in range(6):  # arrive one by one while the worker is busy
                futures.append(pool.submit(timed, i))
                time.sleep(0.15)
        done = sorted((f.result() for f in futures), key=lambda pair: pair[1])
    assert [i for i, _ in done] == list(range(6))
