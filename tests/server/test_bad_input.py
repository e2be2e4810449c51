"""Bad input: each malformed request gets a 4xx with an OpenAI-shaped error body naming the
problem, touches neither the cache nor the queue, and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from .conftest import TINY_CONTEXT
from .harness import ServerProcess

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "hello"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": USER, "max_tokens": 4, **fields}


def text(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "hello", "max_tokens": 4, **fields}


# name: (path, body (JSON-encoded unless bytes), status, param, code)
CASES: dict[str, tuple[str, Any, int, str | None, str | None]] = {
    "malformed_json": (CHAT, b'{"model": ', 400, None, "invalid_json"),
    "json_not_an_object": (CHAT, b"[1, 2]", 400, None, "invalid_json"),
    "unknown_model": (CHAT, chat(model="gpt-17"), 404, "model", "model_not_found"),
    "model_not_a_string": (CHAT, chat(model=7), 400, "model", "invalid_type"),
    "missing_messages": (CHAT, {"model": "tiny"}, 400, "messages", "invalid_type"),
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
        text(prompt="a" * 1500, max_tokens=3000),
        400,
        "max_tokens",
        "context_length_exceeded",
    ),
    "prompt_longer_than_context": (
        TEXT,
        text(prompt="a" * (TINY_CONTEXT + 10)),
        400,
        "prompt",
        "context_length_exceeded",
    ),
    "chat_longer_than_context": (
        CHAT,
        chat(messages=[{"role": "user", "content": "a" * TINY_CONTEXT}]),
        400,
        "messages",
        "context_length_exceeded",
    ),
    "temperature_too_high": (CHAT, chat(temperature=2.5), 400, "temperature", None),
    "temperature_negative": (CHAT, chat(temperature=-0.1), 400, "temperature", None),
    "temperature_string": (CHAT, chat(temperature="hot"), 400, "temperature", "invalid_type"),
    "top_p_zero": (CHAT, chat(top_p=0), 400, "top_p", None),
    "top_p_too_high": (TEXT, text(top_p=1.5), 400, "top_p", None),
    "n_two": (CHAT, chat(n=2), 400, "n", "unsupported_parameter"),
    "logprobs": (CHAT, chat(logprobs=True), 400, "logprobs", "unsupported_parameter"),
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
    "missing_prompt": (TEXT, {"model": "tiny"}, 400, "prompt", "invalid_type"),
    "empty_prompt": (TEXT, text(prompt=""), 400, "prompt", None),
    "empty_token_list": (TEXT, text(prompt=[]), 400, "prompt", None),
    "two_prompts": (TEXT, text(prompt=["a", "b"]), 400, "prompt", None),
    "token_outside_vocabulary": (TEXT, text(prompt=[5, 99999]), 400, "prompt", None),
    "mixed_prompt_list": (TEXT, text(prompt=[5, "a"]), 400, "prompt", "invalid_type"),
}


def send(server: ServerProcess, path: str, body: Any, **headers: str) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **headers}
    return server.post(path, content=content, headers=all_headers)


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
def test_bad_request_gets_openai_error(tiny_server: ServerProcess, case: str) -> None:
    path, body, status, param, code = CASES[case]
    assert_error(send(tiny_server, path, body), status, param, code)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(tiny_server: ServerProcess, content_type: str) -> None:
    response = tiny_server.post(
        CHAT, content=json.dumps(chat()).encode(), headers={"Content-Type": content_type}
    )
    assert_error(response, 415, None, "unsupported_media_type")


def test_oversized_body_is_413(tiny_server: ServerProcess) -> None:
    big = chat(messages=[{"role": "user", "content": "a" * (3 << 19)}])  # 1.5 MiB
    assert_error(send(tiny_server, CHAT, big), 413, None, "request_too_large")


def test_oversized_chunked_body_is_413(tiny_server: ServerProcess) -> None:
    """Without Content-Length the limit is enforced while reading."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    response = tiny_server.post(
        TEXT, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, None, "request_too_large")


def test_unknown_route_and_method_are_openai_shaped(tiny_server: ServerProcess) -> None:
    assert_error(tiny_server.get("/v1/nothing"), 404, None, "not_found")
    assert_error(tiny_server.get(CHAT), 405, None, "method_not_allowed")


def test_openai_client_sees_typed_errors(tiny_server: ServerProcess) -> None:
    client = tiny_server.client()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-17", messages=USER)  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model="tiny", messages=USER, temperature=3)  # type: ignore[arg-type]
    assert hot.value.param == "temperature"


def test_bad_input_leaves_cache_and_server_intact(tiny_server: ServerProcess) -> None:
    client = tiny_server.client()
    request: Any = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "after the storm"}],
        "max_tokens": 8,
        "temperature": 0,
        "extra_body": {"cache_salt": "bad-input"},
    }
    client.chat.completions.create(**request)  # warms the cache
    warm = client.chat.completions.create(**request)
    before = tiny_server.stats()
    for path, body, *_ in CASES.values():
        assert send(tiny_server, path, body).status_code in (400, 404)
    after = tiny_server.stats()
    for field in ("queries", "query_tokens", "inserted_blocks", "used_blocks", "pinned_blocks"):
        assert after[field] == before[field], field
    # Same prompt, same cached split as ``warm``: bitwise the same computation.
    again = client.chat.completions.create(**request)
    assert again.choices[0].message.content == warm.choices[0].message.content
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens > 0
