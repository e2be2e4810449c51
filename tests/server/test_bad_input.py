"""Bad input, in-process over the fake engine (whose validation is the real Intake): each
malformed request gets a 4xx with an OpenAI-shaped error body naming the problem, touches
neither the cache nor the queue, and the server keeps serving. ``test_fuzz.py`` generates
bodies at random; ``test_real_server.py`` checks the openai client's typed errors on a real
process."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import App, running_app
from .fake_engine import CONTEXT, FakeEngine, FakeRunner

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "hello"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "messages": USER, "max_tokens": 4, **fields}


def text(**fields: Any) -> dict[str, Any]:
    return {"model": "fake", "prompt": "hello", "max_tokens": 4, **fields}


# name: (path, body (JSON-encoded unless bytes), status, param, code)
CASES: dict[str, tuple[str, Any, int, str | None, str | None]] = {
    "malformed_json": (CHAT, b'{"model": ', 400, None, "invalid_json"),
    "json_not_an_object": (CHAT, b"[1, 2]", 400, None, "invalid_json"),
    "unknown_model": (CHAT, chat(model="gpt-17"), 404, "model", "model_not_found"),
    "model_not_a_string": (CHAT, chat(model=7), 400, "model", "invalid_type"),
    "missing_messages": (CHAT, {"model": "fake"}, 400, "messages", "invalid_type"),
    "empty_messages": (CHAT, chat(messages=[]), 400, "messages", None),
    "messages_not_a_list": (CHAT, chat(messages="hi"), 400, "messages", "invalid_type"),
    "message_not_an_object": (CHAT, chat(messages=["hi"]), 400, "messages[0]", "invalid_type"),
    "unknown_role": (
        CHAT,
        chat(messages=[{"role": "wizard", "content": "hi"}]),
        400,
        "messages[0].role",
        None,
    ),
    "missing_role": (CHAT, chat(messages=[{"content": "hi"}]), 400, "messages[0].role", None),
    "content_wrong_type": (
        CHAT,
        chat(messages=[*USER, {"role": "user", "content": 5}]),
        400,
        "messages[1].content",
        None,
    ),
    "max_tokens_zero": (CHAT, chat(max_tokens=0), 400, "max_tokens", None),
    "max_tokens_string": (CHAT, chat(max_tokens="10"), 400, "max_tokens", "invalid_type"),
    "max_tokens_float": (CHAT, chat(max_tokens=1.5), 400, "max_tokens", "invalid_type"),
    "max_tokens_bool": (CHAT, chat(max_tokens=True), 400, "max_tokens", "invalid_type"),
    "max_completion_tokens_negative": (
        CHAT,
        chat(max_completion_tokens=-1),
        400,
        "max_completion_tokens",
        None,
    ),
    "max_tokens_over_server_limit": (CHAT, chat(max_tokens=3001), 400, "max_tokens", None),
    "max_tokens_past_context": (
        TEXT,
        text(prompt="a" * 300, max_tokens=300),
        400,
        "max_tokens",
        "context_length_exceeded",
    ),
    "prompt_longer_than_context": (
        TEXT,
        text(prompt="a" * (CONTEXT + 10)),
        400,
        "prompt",
        "context_length_exceeded",
    ),
    "chat_longer_than_context": (
        CHAT,
        chat(messages=[{"role": "user", "content": "a" * CONTEXT}]),
        400,
        "messages",
        "context_length_exceeded",
    ),
    "temperature_too_high": (CHAT, chat(temperature=2.5), 400, "temperature", None),
    "temperature_negative": (CHAT, chat(temperature=-0.1), 400, "temperature", None),
    "temperature_string": (CHAT, chat(temperature="hot"), 400, "temperature", "invalid_type"),
    "top_p_zero": (CHAT, chat(top_p=0), 400, "top_p", None),
    "top_p_too_high": (TEXT, text(top_p=1.5), 400, "top_p", None),
    "n_zero": (CHAT, chat(n=0), 400, "n", None),
    "n_past_max": (TEXT, text(n=17), 400, "n", None),
    "n_string": (CHAT, chat(n="2"), 400, "n", "invalid_type"),
    "best_of_in_chat": (CHAT, chat(best_of=2), 400, "best_of", "unsupported_parameter"),
    "best_of_below_n": (TEXT, text(n=2, best_of=1), 400, "best_of", None),
    "prompt_logprobs_21": (TEXT, text(prompt_logprobs=21), 400, "prompt_logprobs", None),
    "prompt_logprobs_streamed": (
        CHAT,
        chat(prompt_logprobs=1, stream=True),
        400,
        "prompt_logprobs",
        None,
    ),
    "logprobs_not_bool": (CHAT, chat(logprobs=1), 400, "logprobs", "invalid_type"),
    "top_logprobs_21": (CHAT, chat(logprobs=True, top_logprobs=21), 400, "top_logprobs", None),
    "top_logprobs_alone": (CHAT, chat(top_logprobs=2), 400, "top_logprobs", None),
    "top_logprobs_true_alone": (CHAT, chat(top_logprobs=True), 400, "top_logprobs", None),
    "completion_logprobs_6": (TEXT, text(logprobs=6), 400, "logprobs", None),
    "completion_logprobs_true": (TEXT, text(logprobs=True), 400, "logprobs", "invalid_type"),
    "presence_penalty_3": (CHAT, chat(presence_penalty=3), 400, "presence_penalty", None),
    "frequency_penalty_string": (
        TEXT,
        text(frequency_penalty="x"),
        400,
        "frequency_penalty",
        "invalid_type",
    ),
    "repetition_penalty_zero": (CHAT, chat(repetition_penalty=0), 400, "repetition_penalty", None),
    "logit_bias_not_id": (CHAT, chat(logit_bias={"a": 1}), 400, "logit_bias", None),
    "logit_bias_101": (CHAT, chat(logit_bias={"5": 101}), 400, "logit_bias", None),
    "logit_bias_list": (TEXT, text(logit_bias=[1]), 400, "logit_bias", "invalid_type"),
    "logit_bias_outside_vocabulary": (
        CHAT,
        chat(logit_bias={"99999": 1}),
        400,
        "logit_bias",
        None,
    ),
    "stop_token_ids_string": (
        CHAT,
        chat(stop_token_ids="7"),
        400,
        "stop_token_ids",
        "invalid_type",
    ),
    "stop_token_ids_outside_vocabulary": (
        TEXT,
        text(stop_token_ids=[99999]),
        400,
        "stop_token_ids",
        None,
    ),
    "min_tokens_negative": (CHAT, chat(min_tokens=-1), 400, "min_tokens", None),
    "min_tokens_over_max_tokens": (CHAT, chat(min_tokens=5, max_tokens=4), 400, "min_tokens", None),
    "ignore_eos_string": (CHAT, chat(ignore_eos="yes"), 400, "ignore_eos", "invalid_type"),
    "stream_not_bool": (CHAT, chat(stream="yes"), 400, "stream", "invalid_type"),
    "stream_options_not_object": (
        CHAT,
        chat(stream=True, stream_options="all"),
        400,
        "stream_options",
        "invalid_type",
    ),
    "stop_wrong_type": (CHAT, chat(stop=5), 400, "stop", "invalid_type"),
    "seed_string": (CHAT, chat(seed="x"), 400, "seed", "invalid_type"),
    "seed_too_big": (CHAT, chat(seed=2**70), 400, "seed", None),
    "cache_salt_wrong_type": (CHAT, chat(cache_salt=5), 400, "cache_salt", "invalid_type"),
    "missing_prompt": (TEXT, {"model": "fake"}, 400, "prompt", "invalid_type"),
    "empty_prompt": (TEXT, text(prompt=""), 400, "prompt", None),
    "empty_token_list": (TEXT, text(prompt=[]), 400, "prompt", None),
    "two_prompts": (TEXT, text(prompt=["a", "b"]), 400, "prompt", None),
    "token_outside_vocabulary": (TEXT, text(prompt=[5, 99999]), 400, "prompt", None),
    "mixed_prompt_list": (TEXT, text(prompt=[5, "a"]), 400, "prompt", "invalid_type"),
    # Found by an adversarial review: each was a 500 (or silently accepted).
    "lone_surrogate_in_content": (
        CHAT,
        chat(messages=[{"role": "user", "content": "hi \ud800 there"}]),
        400,
        "messages[0].content",
        None,
    ),
    "lone_surrogate_in_prompt": (TEXT, text(prompt="\udfff"), 400, "prompt", None),
    "nested_arrays_100k_deep": (
        CHAT,
        b'{"model": "fake", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
        None,
        "invalid_json",
    ),
    "nested_objects_50k_deep": (
        CHAT,
        b'{"model": "fake", "x": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        400,
        None,
        "invalid_json",
    ),
    "max_tokens_5000_digits": (
        CHAT,
        b'{"model": "fake", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}",
        400,
        None,
        "invalid_json",
    ),
    "unknown_field_5000_digits": (
        CHAT,
        b'{"model": "fake", "messages": [], "whatever": -' + b"7" * 5000 + b"}",
        400,
        None,
        "invalid_json",
    ),
    "max_tokens_4000_digits": (CHAT, chat(max_tokens=10**3999), 400, "max_tokens", None),
    "temperature_400_digits": (CHAT, chat(temperature=10**400), 400, "temperature", None),
    "n_true": (CHAT, chat(n=True), 400, "n", "invalid_type"),
    "top_logprobs_false": (
        CHAT,
        chat(logprobs=True, top_logprobs=False),
        400,
        "top_logprobs",
        "invalid_type",
    ),
    "role_deeply_nested": (
        CHAT,
        chat(messages=[{"role": json.loads("[" * 900 + "]" * 900), "content": "hi"}]),
        400,
        "messages[0].role",
        None,
    ),
    "stop_list_of_numbers": (CHAT, chat(stop=[1, 2]), 400, "stop", "invalid_type"),
    "seed_float": (CHAT, chat(seed=1.5), 400, "seed", "invalid_type"),
}


@pytest.fixture(scope="module")
def served() -> Iterator[App]:
    with running_app(max_tokens_limit=3000, default_max_tokens=8) as app:
        yield app


def send(app: App, path: str, body: Any, **headers: str) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return app.http.post(
        path, content=content, headers={"Content-Type": "application/json", **headers}
    )


def assert_error(response: Any, status: int, param: str | None, code: str | None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert body["error"]["code"] == code


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_request_gets_openai_error(served: App, case: str) -> None:
    path, body, status, param, code = CASES[case]
    assert_error(send(served, path, body), status, param, code)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(served: App, content_type: str) -> None:
    response = served.http.post(
        CHAT, content=json.dumps(chat()).encode(), headers={"Content-Type": content_type}
    )
    assert_error(response, 415, None, "unsupported_media_type")


def test_oversized_body_is_413(served: App) -> None:
    big = chat(messages=[{"role": "user", "content": "a" * (3 << 19)}])  # 1.5 MiB
    assert_error(send(served, CHAT, big), 413, None, "request_too_large")


def test_oversized_chunked_body_is_413(served: App) -> None:
    """Without Content-Length the limit is enforced while reading."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "fake", "prompt": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    response = served.http.post(
        TEXT, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, None, "request_too_large")


def test_unknown_route_and_method_are_openai_shaped(served: App) -> None:
    assert_error(served.http.get("/v1/nothing"), 404, None, "not_found")
    assert_error(served.http.get(CHAT), 405, None, "method_not_allowed")


def test_bad_input_leaves_cache_and_server_intact(served: App) -> None:
    client = served.openai()
    request: Any = {
        "model": "fake",
        "messages": [{"role": "user", "content": "after the storm"}],
        "max_tokens": 8,
        "temperature": 0,
        "extra_body": {"cache_salt": "bad-input"},
    }
    client.chat.completions.create(**request)  # warms the cache
    warm = client.chat.completions.create(**request)
    before, runs = served.stats(), served.engine.runs
    for path, body, *_ in CASES.values():
        assert send(served, path, body).status_code in (400, 404)
    after = served.stats()
    for field in ("queries", "query_tokens", "inserted_blocks", "used_blocks", "pinned_blocks"):
        assert after[field] == before[field], field
    assert served.engine.runs == runs  # nothing reached the queue
    # Same prompt, same cached split as ``warm``: bitwise the same computation.
    again = client.chat.completions.create(**request)
    assert again.choices[0].message.content == warm.choices[0].message.content
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_bad_requests_log_one_line_not_a_flood(
    served: App, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="prefixkv.server"):
        for _ in range(50):
            assert send(served, CHAT, chat(top_p=0)).status_code == 400
    lines = [r for r in caplog.records if r.name == "prefixkv.server" and r.levelno >= logging.INFO]
    assert len(lines) <= 1  # once per kind per 10 s (none if another test just logged it)
    assert all(r.exc_info is None for r in lines)


def test_a_failing_generation_logs_its_traceback_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine()

    def broken(*args: Any) -> Any:
        raise RuntimeError("the model exploded")
        yield  # a generator, as steps() is

    monkeypatch.setattr(FakeRunner, "steps", broken)
    with (
        running_app(engine, raise_server_exceptions=False) as app,
        caplog.at_level(logging.ERROR, logger="prefixkv.server"),
    ):
        for _ in range(20):
            response = send(app, TEXT, text())
            assert response.status_code == 500  # a bug, reported in OpenAI's shape
            assert response.json()["error"]["code"] == "internal_error"
    failures = [r for r in caplog.records if "generation failed" in r.getMessage()]
    assert 1 <= len(failures) <= 2 and sum(r.exc_info is not None for r in failures) <= 1
