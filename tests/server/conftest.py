"""Servers for the tests: the app in-process over a FakeEngine (fast: the bad-input matrix,
response shapes, auth, queueing), and a real ``prefixkv serve`` process on the tiny model
(session-wide: starting one costs seconds), stopped with SIGTERM and required to exit cleanly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from prefixkv.server import ServerSettings, create_app
from prefixkv.server.steps import StepMetrics

from ..engine.tiny import tiny_llama, tiny_tokenizer
from .fake_engine import FakeEngine
from .harness import ServerProcess, parse_metrics

TINY_ARGS = ["--cache-bytes", "64MiB", "--block-size", "4", "--threads", "1"]
TINY_CONTEXT = 4096
JSON_CHARS = "{}[]+\\/"  # what the tiny tokenizer's CHARS lacks for JSON


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a char tokenizer and a ChatML template, saved as a folder.
    Its context is widened to 4096 so that a long stream lasts long enough to interrupt."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    model = tiny_llama()
    model.config.max_position_embeddings = TINY_CONTEXT
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_server_process(
    model_dir: Path, factory: pytest.TempPathFactory, name: str, *extra: str
) -> Iterator[ServerProcess]:
    """A session's server on the tiny model; it must stop cleanly, with no traceback."""
    log = factory.mktemp("logs") / f"{name}.log"
    args = ["--model", str(model_dir), *TINY_ARGS, "--max-tokens-limit", "3000", *extra]
    server = ServerProcess(args, log).wait_ready()
    yield server
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


@pytest.fixture(scope="session")
def tiny_json_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    """A client of a server on a tiny random model whose characters can spell JSON (and
    so tool-call blocks), as the model ``tiny-json``; it must stop cleanly. One for the
    session: its users (structured outputs, tool grammars) only send requests, each
    sampled with its own seed, and a prefix the cache serves gives the same tokens."""
    folder = tmp_path_factory.mktemp("models") / "tiny-json"
    model = tiny_llama(extra=JSON_CHARS)
    model.config.max_position_embeddings = TINY_CONTEXT
    model.save_pretrained(folder)
    tiny_tokenizer(extra=JSON_CHARS).save_pretrained(folder)
    log = tmp_path_factory.mktemp("logs") / "tiny-json.log"
    server = ServerProcess(["--model", str(folder), *TINY_ARGS], log).wait_ready()
    with server.client() as opened:
        yield opened
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


@pytest.fixture(scope="session")
def tiny_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    yield from tiny_server_process(tiny_model_dir, tmp_path_factory, "tiny-server")


@pytest.fixture(scope="session")
def tiny_server_one_at_a_time(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The batch backend limited to one running request: later ones wait (queueing tests)."""
    yield from tiny_server_process(
        tiny_model_dir, tmp_path_factory, "tiny-server-one", "--max-running", "1"
    )


class App:
    """The app over a FakeEngine, in-process: ``http`` is a started TestClient (an httpx
    client), ``openai()`` the official client over it."""

    def __init__(self, engine: FakeEngine, http: TestClient, api_key: str = "") -> None:
        self.engine = engine
        self.http = http
        self.api_key = api_key

    def headers(self, key: str | None = None) -> dict[str, str]:
        key = self.api_key if key is None else key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def openai(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url="http://testserver/v1",
            api_key=key or self.api_key or "none",
            http_client=self.http,
            max_retries=0,
        )

    def stats(self) -> dict[str, Any]:
        response = self.http.get("/v1/cache/stats", headers=self.headers())
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def metrics(self) -> dict[str, float]:
        response = self.http.get("/metrics", headers=self.headers())
        response.raise_for_status()
        return parse_metrics(response.text)


@contextmanager
def running_app(
    engine: FakeEngine | None = None, *, raise_server_exceptions: bool = True, **settings: Any
) -> Iterator[App]:
    """An app over ``engine`` (a new FakeEngine by default) with ``ServerSettings(**settings)``
    (model name "fake"; ``public_metrics`` unless keys are given, as on loopback), its
    lifespan (worker thread) running for the block. Server errors are raised in the test
    unless ``raise_server_exceptions`` is False (to see the 500)."""
    engine = engine or FakeEngine()
    keys = settings.get("api_keys", ())
    # As `prefixkv serve` on loopback: /metrics is open on a server without keys.
    keyless = not (keys or settings.get("admin_keys"))
    defaults = {"allowed_hosts": ("testserver",), "public_metrics": keyless}
    config = ServerSettings(model_names=("fake",), **{**defaults, **settings})
    steps = StepMetrics()
    app = create_app(engine, config, engine.runner(steps.observe), steps)
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as http:
        yield App(engine, http, keys[0] if keys else "")
    engine.gate.set()


@pytest.fixture
def app() -> Iterator[App]:
    with running_app(max_tokens_limit=64, default_max_tokens=16) as running:
        yield running
