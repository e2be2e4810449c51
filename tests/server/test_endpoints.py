"""Every endpoint, in-process over the fake engine, driven by the official openai client where
it applies: response shapes, streaming, usage with cached tokens, models, metrics, cache
stats/reset. (``test_real_server.py`` runs the same client against a real process.)"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from .conftest import App

MESSAGES: Any = [
    {"role": "system", "content": "You are a ship's cat. Answer in meows and purrs only."},
    {"role": "user", "content": "Where is the captain?"},
]


def test_health(app: App) -> None:
    response = app.http.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_models(app: App) -> None:
    client = app.openai()
    assert [m.id for m in client.models.list()] == ["fake"]
    assert client.models.retrieve("fake").id == "fake"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_chat_streaming_and_not_agree(app: App) -> None:
    client = app.openai()
    common: Any = {"model": "fake", "messages": MESSAGES, "max_tokens": 10, "temperature": 0}
    # Distinct salts: both requests start cold, so they compute the very same thing.
    whole = client.chat.completions.create(**common, extra_body={"cache_salt": "agree-1"})
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.prompt_tokens_details is not None
    assert whole.usage.prompt_tokens_details.cached_tokens == 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            **common,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"cache_salt": "agree-2"},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_second_request_reports_cached_tokens(app: App) -> None:
    client = app.openai()
    usages = []
    for question in ("Where is the captain?", "Where is the cook?"):
        messages = [MESSAGES[0], {"role": "user", "content": question}]
        reply = client.chat.completions.create(
            model="fake", messages=messages, max_tokens=3, extra_body={"cache_salt": "second"}
        )
        usages.append(reply.usage)
    first, second = usages
    assert first is not None and first.prompt_tokens_details is not None
    assert second is not None and second.prompt_tokens_details is not None
    assert first.prompt_tokens_details.cached_tokens == 0
    assert 0 < (second.prompt_tokens_details.cached_tokens or 0) < second.prompt_tokens


def test_completions_text_tokens_and_stream(app: App) -> None:
    client = app.openai()
    common: Any = {"model": "fake", "max_tokens": 6, "temperature": 0}
    by_text = client.completions.create(prompt="Once upon a time", **common)
    assert by_text.object == "text_completion" and by_text.id.startswith("cmpl-")
    assert by_text.usage is not None and by_text.usage.completion_tokens <= 6
    one_item = client.completions.create(prompt=["Once upon a time"], **common)
    assert one_item.choices[0].text == by_text.choices[0].text
    ids = [5 + (i % 60) for i in range(20)]
    by_ids = client.completions.create(prompt=ids, **common)
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == len(ids)
    chunks = list(
        client.completions.create(
            prompt="Once upon a time", stream=True, stream_options={"include_usage": True}, **common
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == by_text.choices[0].text
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.prompt_tokens == by_text.usage.prompt_tokens
    )


def test_stop_strings_and_token_limits(app: App) -> None:
    client = app.openai()
    common: Any = {"model": "fake", "prompt": "The tide rolls in", "temperature": 0}
    full = client.completions.create(max_tokens=12, **common).choices[0]
    assert full.finish_reason == "length"
    stop = full.text[3:5]
    cut = client.completions.create(max_tokens=12, stop=[stop], **common).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]
    newer = client.completions.create(extra_body={"max_completion_tokens": 2}, **common)
    assert newer.usage is not None and newer.usage.completion_tokens == 2
    default = client.completions.create(**common)  # max_tokens unset: the server's default
    assert default.usage is not None and default.usage.completion_tokens == 16  # app fixture


def test_sse_wire_format(app: App) -> None:
    body = {"model": "fake", "messages": MESSAGES, "max_tokens": 3, "stream": True}
    response = app.http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)


def test_cache_stats_and_reset(app: App) -> None:
    client = app.openai()
    salt = {"cache_salt": "reset"}
    client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=2, extra_body=salt)
    stats = app.stats()
    assert stats["used_blocks"] > 0 and stats["pinned_blocks"] == 0
    assert stats["hit_rate"] == pytest.approx(stats["hit_tokens"] / stats["query_tokens"])
    reset = app.http.post("/v1/cache/reset", json={})
    assert reset.status_code == 200 and reset.json()["evicted_blocks"] == stats["used_blocks"]
    after = app.stats()
    assert after["used_blocks"] == 0 and after["evicted_blocks"] >= stats["used_blocks"]
    reply = client.chat.completions.create(
        model="fake", messages=MESSAGES, max_tokens=2, extra_body=salt
    )
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 0


CACHE_METRICS = [
    "prefixkv_cache_query_tokens_total",
    "prefixkv_cache_hit_tokens_total",
    "prefixkv_cache_hit_rate",
    "prefixkv_cache_used_blocks",
    "prefixkv_cache_total_blocks",
    "prefixkv_cache_pinned_blocks",
    "prefixkv_cache_used_bytes",
    "prefixkv_cache_capacity_bytes",
    "prefixkv_cache_evicted_blocks_total",
]


def test_metrics_parse_and_move(app: App) -> None:
    before = app.metrics()
    for name in CACHE_METRICS:
        assert name in before, name
    assert before["prefixkv_cache_total_blocks"] > 0
    client = app.openai()
    salt = {"cache_salt": "metrics"}
    for _ in range(2):
        client.chat.completions.create(
            model="fake", messages=MESSAGES, max_tokens=2, extra_body=salt
        )
    after = app.metrics()
    chat_ok = 'prefixkv_http_requests_total{endpoint="/v1/chat/completions",status="200"}'
    assert after[chat_ok] == before.get(chat_ok, 0) + 2
    for moved in (
        "prefixkv_cache_query_tokens_total",
        "prefixkv_cache_hit_tokens_total",
        "prefixkv_time_to_first_token_seconds_count",
        "prefixkv_e2e_request_latency_seconds_count",
        "prefixkv_prompt_tokens_total",
        "prefixkv_cached_tokens_total",
        "prefixkv_generation_tokens_total",
    ):
        assert after[moved] > before.get(moved, 0), moved
    assert 0 < after["prefixkv_cache_hit_rate"] <= 1
    assert after["prefixkv_num_requests_waiting"] == 0


def test_every_tier_figure_is_exported() -> None:
    """Each field of a tier's stats (the facade's and the tier's own) has its Prometheus
    series: a field added to one but not the other would be missing from /metrics."""
    from prefixkv.cache.protocol import TierStats
    from prefixkv.server.metrics import _TIER_HELP
    from prefixkv.tiers.protocol import TierCounters

    fields = set(TierStats._fields) - {"tier", "counters"} | set(TierCounters._fields)
    assert set(_TIER_HELP) == fields
