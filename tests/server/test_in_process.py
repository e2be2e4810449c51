"""The app in-process (``create_app`` + ``TestClient``), with an engine whose worker can be
held at will: a full queue answers 429 and loses nothing already queued."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prefixkv.engine.engine import Engine
from prefixkv.server import ServerSettings, create_app

from .harness import wait_for


class GatedEngine:
    """An Engine whose ``stream`` waits for ``gate``; ``entered`` tells a stream began."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self.gate.wait(60)
        return self.engine.stream(*args, **kwargs)


@pytest.fixture
def gated(tiny_model_dir: Path) -> Iterator[tuple[GatedEngine, TestClient]]:
    engine = GatedEngine(Engine.from_pretrained(str(tiny_model_dir), cache_bytes=8 << 20))
    settings = ServerSettings(model_names=("tiny",), max_queue=1)
    with TestClient(create_app(engine, settings)) as client:  # type: ignore[arg-type]
        yield engine, client
    engine.gate.set()


def waiting(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("prefixkv_num_requests_waiting "):
            return float(line.split()[1])
    raise AssertionError("no prefixkv_num_requests_waiting metric")


def test_full_queue_answers_429_and_keeps_the_queued(
    gated: tuple[GatedEngine, TestClient],
) -> None:
    engine, client = gated
    body = {"model": "tiny", "prompt": "Tide tables for", "max_tokens": 3, "temperature": 0}
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.post, "/v1/completions", json=body)
        assert engine.entered.wait(30)  # the worker holds the first request
        queued = pool.submit(client.post, "/v1/completions", json=body)
        assert wait_for(lambda: waiting(client) == 1, timeout=30)
        refused = client.post("/v1/completions", json=body)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        engine.gate.set()
        first, second = running.result(30), queued.result(30)
    assert first.status_code == second.status_code == 200
    for reply in (first, second):
        assert reply.json()["usage"]["completion_tokens"] >= 1
