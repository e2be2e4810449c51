"""``--request-log``: one line per finished generation, with block names and timings, never
text or token ids; written off the serving path, dropping (counted) when it falls behind."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from prefixkv.cache.tenants import Namespace
from prefixkv.server import ServerSettings, create_app
from prefixkv.server import request_log as request_log_module
from prefixkv.server.auth import tenant_of
from prefixkv.server.request_log import RequestLog, namer_for
from prefixkv.server.steps import StepMetrics
from prefixkv.tiers.naming import BlockNamer

from .fake_engine import BLOCK, FakeEngine
from .harness import parse_metrics

KEYS = ("key-of-alice-123", "key-of-bob-456")
ADMIN = "admin-key-789"
WORDS = "zebra quokka marmalade"


@contextmanager
def logged_app(path: Path, max_pending: int = 1000) -> Iterator[tuple[TestClient, FakeEngine]]:
    engine = FakeEngine()
    settings = ServerSettings(
        model_names=("fake",), api_keys=KEYS, admin_keys=(ADMIN,), allowed_hosts=("testserver",)
    )
    log = RequestLog(path, namer_for(engine.cache, "fake"), 123, max_pending)
    steps = StepMetrics()
    app = create_app(engine, settings, engine.runner(steps.observe), steps, request_log=log)
    with TestClient(app) as http:
        yield http, engine


def chat(http: TestClient, key: str, content: str, **extra: Any) -> dict[str, Any]:
    body = {"model": "fake", "messages": [{"role": "user", "content": content}], **extra}
    response = http.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    response.raise_for_status()
    reply: dict[str, Any] = response.json()
    return reply


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_line_per_request_with_names_counts_and_times(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    with logged_app(path) as (http, engine):
        first = chat(http, KEYS[0], WORDS, max_tokens=9)
        second = chat(http, KEYS[0], WORDS, max_tokens=9)
        chat(http, KEYS[1], WORDS, max_tokens=9, cache_salt="s")
        ids = engine.tokenize([{"role": "user", "content": WORDS}])
    records = lines(path)  # the app's exit closed the log: every line is written
    assert [r["outcome"] for r in records] == ["completed"] * 3
    assert [r["tenant"] for r in records] == [tenant_of(KEYS[0])] * 2 + [tenant_of(KEYS[1])]
    assert records[0]["namespace"] == records[1]["namespace"] != records[2]["namespace"]
    for record, reply in zip(records, (first, second), strict=False):
        usage = reply["usage"]
        assert record["prompt_tokens"] == usage["prompt_tokens"] == len(ids) // 4
        assert record["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
        assert record["output_tokens"] == usage["completion_tokens"] == 9
        assert 0 <= record["ttft"] <= record["e2e"]
    assert records[0]["cached_tokens"] == 0 < records[1]["cached_tokens"]
    # The names are the tiers' chained names of the prompt's full blocks, in its namespace.
    namer = namer_for(engine.cache, "fake")
    namespace = Namespace(tenant_of(KEYS[0]), "")
    full = len(ids) // 4 // BLOCK
    assert records[0]["blocks"] == [n.hex() for n in namer.names(ids, namespace, full)]
    assert records[0]["blocks"] == records[1]["blocks"]
    assert set(records[0]["blocks"]).isdisjoint(records[2]["blocks"])  # another namespace
    assert records[0]["block_size"] == BLOCK and records[0]["block_bytes"] == 123


def test_never_text_token_ids_or_keys(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    with logged_app(path) as (http, engine):
        reply = chat(http, KEYS[0], WORDS, max_tokens=12)
        ids = engine.tokenize([{"role": "user", "content": WORDS}])
    text = path.read_text()
    for word in [*WORDS.split(), reply["choices"][0]["message"]["content"], *KEYS]:
        assert word not in text
    prompt_ids = [int.from_bytes(ids[i : i + 4], "little") for i in range(0, len(ids), 4)]
    for width in (", ", ","):
        assert width.join(map(str, prompt_ids[4:12])) not in text
    for record in lines(path):
        for value in record.values():
            assert not (isinstance(value, list) and any(isinstance(v, int) for v in value))
    assert path.stat().st_mode & 0o077 == 0


def test_a_stalled_writer_drops_and_counts_never_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that stops answering: serving goes on at full speed, lines past the queue's
    bound are dropped, counted in the log and in /metrics; the queued ones still land."""
    stalled = threading.Event()
    real = request_log_module.line_of

    def slow_line(*args: Any) -> dict[str, Any]:
        stalled.wait(30)
        return real(*args)

    monkeypatch.setattr(request_log_module, "line_of", slow_line)
    path = tmp_path / "requests.jsonl"
    with logged_app(path, max_pending=2) as (http, _):
        for i in range(8):
            chat(http, KEYS[0], f"request {i}", max_tokens=2)  # returns: never waits on the log
        metrics = parse_metrics(
            http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
        )
        stalled.set()
    # The writer holds one record and two wait: five of the eight are dropped.
    assert metrics["prefixkv_request_log_dropped"] == 5
    assert len(lines(path)) == 3


def test_blocks_names_of_the_output_continue_the_prompts(tmp_path: Path) -> None:
    """``output_blocks`` extend the prompt's chain with the generated ids (all but the last,
    whose KV is never computed)."""
    namer = BlockNamer(bytes(16), 4)
    prompt = bytes(range(40))  # 10 tokens: 2 full blocks and 2 tokens
    record = request_log_module.Finished(
        0.0, "chat", None, request_log_module.TokenBytes(prompt), (7, 8, 9, 10, 11, 12, 13),
        0, 0.1, 0.2, "completed",
    )  # fmt: skip
    line = request_log_module.line_of(record, namer, 64)
    fed = prompt + b"".join(i.to_bytes(4, "little") for i in (7, 8, 9, 10, 11, 12))
    names = [n.hex() for n in namer.names(fed, None, 4)]
    assert line["blocks"] == names[:2] and line["output_blocks"] == names[2:]
    assert line["output_tokens"] == 7 and line["tenant"] is None


def test_a_tiered_cache_names_blocks_as_its_tiers_do(tmp_path: Path) -> None:
    """With tiers, the log's names are the tier records' names (keyed with the tier key)."""
    from prefixkv.tiers.disk import DiskTier
    from prefixkv.tiers.key import TierKey
    from prefixkv.tiers.tiered import TieredCache
    from tests.tiers.kv import FINGERPRINT, hot_cache

    cache = TieredCache(
        hot_cache(8), [DiskTier(tmp_path / "disk", 1 << 20)], FINGERPRINT, key=TierKey.generate()
    )
    try:
        assert namer_for(cache, "any name") is cache.namer
    finally:
        cache.shutdown()
    plain = namer_for(FakeEngine().cache, "fake")
    assert plain.names(bytes(64), None, 2) != namer_for(FakeEngine().cache, "other").names(
        bytes(64), None, 2
    )  # unkeyed names still depend on the model's name
