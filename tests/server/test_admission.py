"""Admission in-process: a full queue answers 429 at once and loses nothing already queued;
requests being tokenized count against the bound."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .conftest import App, running_app
from .fake_engine import FakeEngine
from .harness import wait_for


def waiting(app: App) -> float:
    return app.metrics()["prefixkv_num_requests_waiting"]


def test_full_queue_answers_429_and_keeps_the_queued() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    body = {"model": "fake", "prompt": "Tide tables for", "max_tokens": 3}
    with running_app(engine, max_queue=1) as app, ThreadPoolExecutor(2) as pool:
        running = pool.submit(app.http.post, "/v1/completions", json=body)
        assert engine.entered.wait(30)  # the worker holds the first request
        queued = pool.submit(app.http.post, "/v1/completions", json=body)
        assert wait_for(lambda: waiting(app) == 1, timeout=30)
        refused = app.http.post("/v1/completions", json=body)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        engine.gate.set()
        first, second = running.result(30), queued.result(30)
    assert first.status_code == second.status_code == 200
    for reply in (first, second):
        assert reply.json()["usage"]["completion_tokens"] == 3


def test_tokenizing_runs_off_the_event_loop_and_counts_against_the_queue() -> None:
    """A prompt that takes seconds to tokenize freezes nothing, and holds a queue slot."""
    engine = FakeEngine()
    engine.tokenizer.delay = 2.0
    body = {"model": "fake", "prompt": "a huge prompt", "max_tokens": 2}
    with running_app(engine, max_queue=1) as app, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(app.http.post, "/v1/completions", json=body)
        assert wait_for(lambda: waiting(app) == 1, timeout=5)  # admitted, being tokenized
        started = time.monotonic()
        assert app.http.get("/health").status_code == 200
        assert time.monotonic() - started < 0.5  # the event loop is free
        refused = app.http.post("/v1/completions", json=body)
        assert refused.status_code == 429  # the slot is taken while tokenizing
        assert slow.result(30).status_code == 200
