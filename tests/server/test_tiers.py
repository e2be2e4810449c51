"""Real servers with tiers answer exactly as one without a cache (one ``--no-prefix-cache``
server per module gives the expected replies): restarts on a sealed disk tier (the key never
shown), damaged records, a kill -9 mid-write, a disk that fills, two replicas on one Redis
(sharing a key) through its outage. In-process: a promotion that hangs delays no other
request, and its own request is queued only once it is done."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from prefixkv.cache.paged import PrefixKVCache
from tests.redis_fixtures import StartRedis
from tests.tmpfs import tmpfs

from .conftest import TINY_ARGS, running_app
from .fake_engine import FakeEngine
from .harness import ServerProcess, wait_for

KEY = "5e" * 32
SEALED = {"PREFIXKV_TIER_KEY": KEY}


class HangingPromotion:
    """A FakeEngine's cache whose first ``promote`` waits for ``release``."""

    def __init__(self, inner: PrefixKVCache) -> None:
        self.inner = inner
        self.hanging = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def promote(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> dict[str, int]:
        self.calls += 1
        if self.calls == 1:
            self.hanging.set()
            assert self.release.wait(30)
        return {}


def test_a_hanging_promotion_delays_no_other_request() -> None:
    engine = FakeEngine()
    cache = HangingPromotion(engine.cache)
    engine.cache = cache  # type: ignore[assignment]
    ask = {"model": "fake", "max_tokens": 3}
    with running_app(engine) as app, ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(app.http.post, "/v1/completions", json={**ask, "prompt": "first"})
        assert cache.hanging.wait(10)
        started = time.monotonic()
        other = app.http.post("/v1/completions", json={**ask, "prompt": "second"})
        assert other.status_code == 200 and time.monotonic() - started < 5
        assert engine.runs == 1  # the stuck request is not queued before its promotion ends
        assert not stuck.done()
        cache.release.set()
        assert stuck.result(30).status_code == 200 and engine.runs == 2


DOCUMENT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog. " for i in range(6))


@pytest.fixture(scope="module")
def uncached(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The reference: the same model with no prefix cache."""
    server = _server(
        tiny_model_dir, tmp_path_factory.mktemp("logs"), "nocache", "--no-prefix-cache"
    )
    yield server
    assert server.stop() == 0, server.output()


ADMIN = "admin-key-of-the-tier-tests"


def _server(
    model: Path, tmp: Path, name: str, *extra: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """A server whose every request is the admin's: the tier figures are whole-cache views."""
    args = ["--model", str(model), *TINY_ARGS, "--admin-key", ADMIN, *extra]
    return ServerProcess(args, tmp / f"{name}.log", env=env, api_key=ADMIN).wait_ready()


def _ask(server: ServerProcess, question: str) -> tuple[str, int]:
    reply = server.client().chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": DOCUMENT}, {"role": "user", "content": question}],
        max_tokens=12,
        temperature=0,
    )
    details = reply.usage.prompt_tokens_details if reply.usage else None
    return reply.choices[0].message.content or "", (details.cached_tokens or 0) if details else 0


@pytest.mark.process
def test_a_restarted_server_serves_earlier_prefixes_from_disk(
    tiny_model_dir: Path, tmp_path: Path, uncached: ServerProcess
) -> None:
    disk = ["--disk-cache", str(tmp_path / "kv"), "--disk-cache-bytes", "64MiB"]
    expected = [_ask(uncached, q)[0] for q in ("first?", "second?")]
    first = _server(tiny_model_dir, tmp_path, "first", *disk, env=SEALED)
    try:
        assert _ask(first, "first?")[0] == expected[0]
    finally:
        assert first.stop() == 0, first.output()
    assert "tier records sealed (AES-256-GCM)" in first.output()
    again = _server(tiny_model_dir, tmp_path, "again", *disk, env=SEALED)
    try:
        before = again.stats()["tiers"][0]
        assert before["tier"] == "disk" and before["blocks"] > 0
        text, cached = _ask(again, "second?")
        assert text == expected[1]
        assert cached >= len(DOCUMENT) // 2  # the document's blocks came back from disk
        (tier,) = again.stats()["tiers"]
        assert tier["hit_blocks"] > 0 and tier["verification_failures"] == 0
        assert again.metrics()['prefixkv_tier_hit_blocks_total{tier="disk"}'] > 0
    finally:
        assert again.stop() == 0, again.output()
    assert "Traceback" not in again.output()
    for server in (first, again):
        assert KEY not in server.output() and KEY.upper() not in server.output()
    _flip_a_byte_in_every_record(tmp_path / "kv")
    damaged = _server(tiny_model_dir, tmp_path, "damaged", *disk, env=SEALED)
    try:
        text, cached = _ask(damaged, "second?")
        assert (text, cached) == (expected[1], 0)
        assert damaged.stats()["tiers"][0]["verification_failures"] == 1  # then: a miss
    finally:
        assert damaged.stop() == 0, damaged.output()


def _flip_a_byte_in_every_record(directory: Path) -> None:
    for path in directory.rglob("*.kv"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.mark.process
def test_kill_9_while_writing_leaves_nothing_corrupt_served(
    tiny_model_dir: Path, tmp_path: Path, uncached: ServerProcess
) -> None:
    disk = ["--disk-cache", str(tmp_path / "kv"), "--disk-cache-bytes", "64MiB"]
    questions = [f"question {i}?" for i in range(4)]
    expected = [_ask(uncached, q)[0] for q in questions]
    for round_ in range(2):  # kill right after replies, while the writer is busy
        victim = _server(tiny_model_dir, tmp_path, f"victim{round_}", *disk)
        assert [_ask(victim, q)[0] for q in questions[:2]] == expected[:2]
        victim.stop(signal.SIGKILL)
    again = _server(tiny_model_dir, tmp_path, "again", *disk)
    try:
        assert [_ask(again, q)[0] for q in questions] == expected
        (tier,) = again.stats()["tiers"]
        assert tier["verification_failures"] == 0
    finally:
        assert again.stop() == 0, again.output()


@pytest.mark.process
def test_two_replicas_on_one_redis_share_prefixes_and_survive_its_outage(
    tiny_model_dir: Path, tmp_path: Path, uncached: ServerProcess, start_redis: StartRedis
) -> None:
    redis = start_redis()
    questions = ["one?", "two?", "three?", "four?"]
    expected = [_ask(uncached, q)[0] for q in questions]
    shared = ["--redis-url", redis.url]
    a = _server(tiny_model_dir, tmp_path, "replica-a", *shared, env=SEALED)
    b = _server(tiny_model_dir, tmp_path, "replica-b", *shared, env=SEALED)
    try:
        assert _ask(a, questions[0]) == (expected[0], 0)
        assert wait_for(lambda: a.stats()["tiers"][0]["writes"] > 0)
        time.sleep(0.5)  # the writer finishes the last blocks of the prompt
        text, cached = _ask(b, questions[1])  # the document was computed by a only
        assert text == expected[1] and cached >= len(DOCUMENT) // 2
        assert b.stats()["tiers"][0]["hit_blocks"] > 0
        redis.stop()  # an outage: every request still succeeds, from RAM or computed
        assert [_ask(b, q)[0] for q in questions[2:]] == expected[2:]
        assert _ask(a, questions[3])[0] == expected[3]
        assert a.stats()["tiers"][0]["errors"] + b.stats()["tiers"][0]["errors"] > 0
        written = a.stats()["tiers"][0]["writes"]
        redis.start()  # back (empty): the tier reconnects by itself
        time.sleep(1.5)  # past its retry_after
        _ask(a, "five?")
        assert wait_for(lambda: a.stats()["tiers"][0]["writes"] > written, timeout=10)
    finally:
        for server in (a, b):
            assert server.stop() == 0, server.output()
            assert "Traceback" not in server.output()


@pytest.mark.process
def test_a_disk_tier_that_fills_costs_hits_never_a_request(
    tiny_model_dir: Path, tmp_path: Path, uncached: ServerProcess
) -> None:
    with tmpfs(tmp_path / "small", "256k") as mount:
        questions = [f"item {i}?" for i in range(4)]
        expected = [_ask(uncached, q)[0] for q in questions]
        full = _server(tiny_model_dir, tmp_path, "full", "--disk-cache", str(mount))
        try:
            assert [_ask(full, q)[0] for q in questions] == expected
            assert wait_for(lambda: full.stats()["tiers"][0]["errors"] > 0)
            assert [_ask(full, q)[0] for q in questions] == expected
        finally:
            assert full.stop() == 0, full.output()
        assert full.output().count("disk tier") <= 2  # logged once (per pause), not per block


@pytest.mark.process
def test_servers_whose_arithmetic_differs_never_hit_each_others_records(
    tiny_model_dir: Path, tmp_path: Path, uncached: ServerProcess, start_redis: StartRedis
) -> None:
    """Replicas on one Redis (one key) share prefixes only when their KV has the same bits:
    another attention kernel or the serial engine may round differently, so each misses what
    the others wrote (no hit, and no failed verification: the names differ), while a
    replica with the same settings hits."""
    redis = start_redis()
    shared = ["--redis-url", redis.url]
    questions = ["one?", "two?", "three?", "four?"]
    expected = [_ask(uncached, q)[0] for q in questions]
    writer = _server(tiny_model_dir, tmp_path, "writer", *shared, env=SEALED)
    try:
        assert _ask(writer, questions[0]) == (expected[0], 0)
        assert wait_for(lambda: writer.stats()["tiers"][0]["writes"] > 0)
        time.sleep(0.5)  # the writer finishes the last blocks of the prompt
    finally:
        assert writer.stop() == 0, writer.output()
    others = [("--attention-kernel", "torch"), ("--backend", "serial")]
    for i, setting in enumerate(others, start=1):
        other = _server(tiny_model_dir, tmp_path, f"other{i}", *shared, *setting, env=SEALED)
        try:
            assert _ask(other, questions[i]) == (expected[i], 0), setting
            (tier,) = other.stats()["tiers"]
            assert tier["hit_blocks"] == 0 and tier["verification_failures"] == 0, setting
        finally:
            assert other.stop() == 0, other.output()
    same = _server(tiny_model_dir, tmp_path, "same", *shared, env=SEALED)
    try:
        text, cached = _ask(same, questions[3])
        assert text == expected[3] and cached >= len(DOCUMENT) // 2
        assert same.stats()["tiers"][0]["hit_blocks"] > 0
    finally:
        assert same.stop() == 0, same.output()
