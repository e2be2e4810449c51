"""Graceful shutdown: on SIGTERM the server stops accepting work, answers what is queued at
once, lets the in-flight stream finish within the grace period, and exits with status 0."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import TINY_ARGS
from .harness import ServerProcess, wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.serial]  # "at once": < 2 s


def test_sigterm_lets_the_running_stream_finish(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = ServerProcess(
        ["--model", str(tiny_model_dir), *TINY_ARGS], tmp_path / "log"
    ).wait_ready()
    body = {
        "model": "tiny",
        "prompt": "The last ferry leaves at",
        "max_tokens": 1500,  # seconds of work: the signal lands mid-stream
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events: list[str] = []
    with (
        httpx.Client(timeout=60.0) as http,
        http.stream("POST", server.url + "/v1/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        while not events:
            line = next(lines)
            if line.startswith("data: "):
                events.append(line[6:])
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connections while shutting down
            httpx.get(server.url + "/health", timeout=5.0)
        events += [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    finish = json.loads(events[-3])["choices"][0]["finish_reason"]
    assert finish == "stop" or (finish == "length" and usage["completion_tokens"] == 1500)
    assert server.process.wait(30) == 0, server.output()


def _post(server: ServerProcess, body: dict[str, object]) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", json=body, timeout=60.0)


def test_sigterm_answers_the_queued_at_once_and_cuts_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Queued requests get an OpenAI-shaped 503 (a stream: an error event and [DONE]) as soon
    as the signal lands; the running one, longer than the grace period, is stopped in time
    to end its stream properly."""
    server = ServerProcess(
        [
            "--model",
            str(tiny_model_dir),
            *TINY_ARGS,
            "--max-tokens-limit",
            "4000",
            "--grace-seconds",
            "3",
            "--max-running",
            "1",
        ],
        tmp_path / "log",
    ).wait_ready()
    try:
        _queued_then_sigterm(server)
    finally:
        server.stop()  # a failure above must not leave it running into the next test


def _queued_then_sigterm(server: ServerProcess) -> None:
    long = {"prompt": "The last ferry leaves at", "max_tokens": 4000, "temperature": 0}
    with (
        ThreadPoolExecutor(3) as pool,
        httpx.Client(timeout=60.0) as http,
        http.stream(
            "POST", server.url + "/v1/completions", json={**long, "stream": True}
        ) as running,
    ):
        lines = running.iter_lines()
        while not next(lines).startswith("data: "):
            pass  # the worker is generating
        queued_plain = pool.submit(_post, server, {"prompt": "Hi", "max_tokens": 2})
        queued_stream = pool.submit(
            _post, server, {"prompt": "Hi", "max_tokens": 2, "stream": True}
        )
        assert wait_for(lambda: server.metrics()["prefixkv_num_requests_waiting"] == 2)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        plain, stream = queued_plain.result(10), queued_stream.result(10)
        assert time.monotonic() - signalled < 2.0  # at once, not after the grace period
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert plain.status_code == 503
    assert plain.json()["error"]["type"] == "server_error"
    events = [e[6:] for e in stream.text.split("\n\n") if e.startswith("data: ")]
    # (Once in CI the queued stream's body held no event: show what it held.)
    seen = f"stream {stream.status_code} {stream.headers.get('content-type')}: {stream.text!r}"
    assert events and json.loads(events[0])["error"]["code"] == "cancelled", seen
    assert events[-1] == "[DONE]", seen
    assert rest[-1] == "[DONE]" and "error" in json.loads(rest[-2])
    assert server.process.wait(30) == 0, server.output()
    assert "Traceback" not in server.output(), server.output()
