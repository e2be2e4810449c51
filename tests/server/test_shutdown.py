"""Graceful shutdown: on SIGTERM the server stops accepting work, lets the in-flight stream
finish, and exits with status 0."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from .conftest import TINY_ARGS
from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]


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
