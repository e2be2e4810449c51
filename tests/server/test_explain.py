"""``POST /v1/cache/explain`` and the miss reasons of served requests, over the fake engine:
each reason named for the traffic that causes it, through the official openai client for
the requests and plain HTTP for the explanations; per-tenant figures with bounded labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prefixkv.cache import NullCache
from prefixkv.cache.explain import MISS_REASONS
from prefixkv.server.auth import tenant_of
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.tiered import TieredCache

from .conftest import App, running_app
from .fake_engine import BLOCK, LAYOUT, FakeEngine

SYSTEM = {"role": "system", "content": "You are a ship's cat. Answer in meows."}
FIRST = {"role": "user", "content": "Where is the captain?"}
REPLY = {"role": "assistant", "content": "Meow meow."}
SECOND = {"role": "user", "content": "And the first mate?"}
DOCUMENT = "The manifest lists forty barrels of salted fish and nine of rum. " * 2


def explain(app: App, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    response = app.http.post("/v1/cache/explain", json=body, headers=app.headers(key))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def chat(app: App, messages: list[dict[str, str]], key: str | None = None, **extra: Any) -> None:
    app.openai(key).chat.completions.create(
        model="fake",
        messages=messages,
        max_tokens=2,
        extra_body=extra,  # type: ignore[arg-type]
    )


def complete(app: App, prompt: str, key: str | None = None, **extra: Any) -> None:
    app.openai(key).completions.create(model="fake", prompt=prompt, max_tokens=2, extra_body=extra)


def test_cold_then_hit_and_nothing_changes() -> None:
    messages = [SYSTEM, FIRST]
    with running_app() as app:
        cold = explain(app, {"messages": messages})
        assert cold["reason"] == "cold" and cold["hit_tokens"] == 0
        assert cold["miss_tokens"] == {"cold": cold["prompt_tokens"]}
        assert app.stats()["queries"] == 0  # explaining is not a lookup
        chat(app, messages)
        before = app.stats()
        assert before["miss_tokens"]["cold"] == cold["prompt_tokens"]
        hit = explain(app, {"messages": messages, "model": "fake", "max_tokens": 3})
        assert hit["reason"] == "hit" and hit["first_difference"] is None
        assert hit["hit_tokens"] == hit["prompt_tokens"] and hit["miss_tokens"] == {}
        after = app.stats()
        after.pop("time_to_first_token"), before.pop("time_to_first_token")
        assert after == before


def test_a_changed_earlier_turn_diverges_there() -> None:
    with running_app() as app:
        chat(app, [SYSTEM, FIRST, REPLY, SECOND])
        changed = {"role": "user", "content": "Where is the boatswain?"}
        answer = explain(app, {"messages": [SYSTEM, changed, REPLY, SECOND]})
        assert answer["reason"] == "diverged"
        assert answer["diverged_in"] == {"message": 1, "role": "user", "earlier_turn": True}
        diff = answer["first_difference"]
        assert diff["prompt"]["before"].endswith("Where is the ")
        assert diff["prompt"]["after"].startswith("boatswain?")
        assert diff["cache"]["after"].startswith("captain?")
        assert answer["hit_tokens"] <= diff["token"] < answer["hit_tokens"] + BLOCK
        chat(app, [SYSTEM, changed, REPLY, SECOND])
        assert app.stats()["miss_tokens"]["diverged"] == answer["miss_tokens"]["diverged"]


def test_an_evicted_document_says_when_and_why() -> None:
    doc_blocks = len(DOCUMENT) // BLOCK
    with running_app(FakeEngine(capacity_blocks=doc_blocks + 8)) as app:
        complete(app, DOCUMENT)
        complete(app, DOCUMENT.upper())  # needs the room: the first document's blocks go
        answer = explain(app, {"prompt": DOCUMENT})
        assert answer["reason"] == "evicted"
        evicted = answer["evicted"]
        assert evicted["pressure"] == "store" and evicted["own_tenant"] is True
        assert 0 <= evicted["seconds_ago"] < 60
        complete(app, DOCUMENT)
        assert app.stats()["miss_tokens"]["evicted"] == answer["miss_tokens"]["evicted"] > 0


def test_a_partial_block_is_the_tail() -> None:
    prompt = DOCUMENT[: 10 * BLOCK]
    with running_app() as app:
        complete(app, prompt)
        answer = explain(app, {"prompt": prompt + "Ahoy"[: BLOCK - 1]})
        assert answer["reason"] == "partial_block"
        assert answer["miss_tokens"] == {"partial_block": BLOCK - 1}
        assert answer["hit_tokens"] == len(prompt)
        complete(app, prompt + "Ahoy"[: BLOCK - 1])
        assert app.stats()["miss_tokens"]["partial_block"] == BLOCK - 1


def test_another_salt_is_named_without_its_name() -> None:
    with running_app() as app:
        complete(app, DOCUMENT, cache_salt="alice-secret")
        answer = explain(app, {"prompt": DOCUMENT, "cache_salt": "bob"})
        assert answer["reason"] == "other_namespace"
        full = len(DOCUMENT) // BLOCK
        assert answer["other_namespace"] == {"blocks": full, "tokens": full * BLOCK}
        assert "alice" not in str(answer) and "other_tenant" not in answer
        complete(app, DOCUMENT, cache_salt="bob")
        assert app.stats()["miss_tokens"]["other_namespace"] == full * BLOCK


def test_another_tenant_is_seen_by_the_admin_only() -> None:
    keys = {"api_keys": ("key-a", "key-b"), "admin_keys": ("admin",)}
    with running_app(**keys) as app:
        complete(app, DOCUMENT, key="key-a", cache_salt="s1")
        other = explain(app, {"prompt": DOCUMENT}, key="key-b")
        assert other["reason"] == "cold" and "other_tenant" not in other
        admin = explain(app, {"prompt": DOCUMENT}, key="admin")
        assert admin["reason"] == "cold"
        assert admin["other_tenant"] == {
            "tenant": tenant_of("key-a"),
            "salt": "s1",
            "blocks": len(DOCUMENT) // BLOCK,
        }


def test_a_disk_only_prefix_is_in_a_lower_tier(tmp_path: Path) -> None:
    engine = FakeEngine()
    tiered = TieredCache(
        engine.cache, [DiskTier(tmp_path, 1 << 24)], bytes(16), key=TierKey.generate()
    )
    engine.cache = tiered  # type: ignore[assignment]
    with running_app(engine) as app:
        complete(app, DOCUMENT)
        assert tiered.flush(10)
        reset = app.http.post("/v1/cache/reset", json={})
        assert reset.json()["evicted_blocks"] == len(DOCUMENT) // BLOCK
        for _ in range(2):  # the first explanation promoted nothing
            answer = explain(app, {"prompt": DOCUMENT})
            assert answer["reason"] == "lower_tier"
            assert answer["lower_tier"]["tier"] == "disk"
            assert answer["lower_tier"]["blocks"] == len(DOCUMENT) // BLOCK
            assert answer["evicted"]["pressure"] == "reset"
        assert tiered.tier_stats()[0].promoted_blocks == 0
    tiered.shutdown()


def test_disabled() -> None:
    engine = FakeEngine()
    engine.cache = NullCache(LAYOUT, BLOCK)  # type: ignore[assignment]
    with running_app(engine) as app:
        answer = explain(app, {"prompt": DOCUMENT})
        assert answer["reason"] == "disabled"
        assert answer["miss_tokens"] == {"disabled": len(DOCUMENT)}
        complete(app, DOCUMENT)
        assert app.stats()["miss_tokens"]["disabled"] == len(DOCUMENT)


def test_bad_bodies_name_the_field() -> None:
    with running_app() as app:
        for body, param in (
            ({"messages": "hi"}, "messages"),
            ({"prompt": 7}, "prompt"),
            ({"prompt": "hi", "cache_salt": 3}, "cache_salt"),
        ):
            response = app.http.post("/v1/cache/explain", json=body)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == param
        unknown = app.http.post("/v1/cache/explain", json={"prompt": "hi", "model": "gpt-17"})
        assert unknown.status_code == 404
        assert explain(app, {"prompt": "still serving"})["reason"] == "cold"


@pytest.mark.parametrize("salts", [40])
def test_tenant_metrics_have_bounded_labels(salts: int) -> None:
    keys = {"api_keys": ("key-a", "key-b"), "admin_keys": ("admin",)}
    with running_app(**keys) as app:
        for i in range(salts):
            complete(app, DOCUMENT[: 3 * BLOCK + i % BLOCK], key="key-a", cache_salt=f"salt-{i}")
        complete(app, DOCUMENT, key="key-b")
        text = app.http.get("/metrics", headers=app.headers("admin")).text
        assert "salt-" not in text
        tenants = {tenant_of(k) for k in ("key-a", "key-b", "admin")}
        series = App(app.engine, app.http, "admin").metrics()
        for name in series:
            if name.startswith("prefixkv_tenant_"):
                labels = dict(p.split("=") for p in name[name.index("{") + 1 : -1].split(","))
                assert labels["tenant"].strip('"') in tenants
                assert labels.get("reason", '"cold"').strip('"') in MISS_REASONS
        a = f'{{tenant="{tenant_of("key-a")}"}}'
        assert series[f"prefixkv_tenant_query_tokens_total{a}"] == sum(
            3 * BLOCK + i % BLOCK for i in range(salts)
        )
        own = app.http.get("/v1/cache/stats", headers=app.headers("key-a")).json()
        assert own["time_to_first_token"]["requests"] == salts
        assert sum(own["miss_tokens"].values()) == own["query_tokens"] - own["hit_tokens"]
