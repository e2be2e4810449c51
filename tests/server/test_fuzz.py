"""Fuzzing the HTTP API in-process: bodies built from the API's own fields with values of any
JSON type (and plausible ones, so that some requests get through to generation), plus raw
bytes. Whatever arrives, the answer is a 2xx or a 4xx in OpenAI's shape, never a 5xx, and
the cache stays consistent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .conftest import App, running_app

PATHS = ("/v1/chat/completions", "/v1/completions")
SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udbffb"])
TEXT = st.text(max_size=40) | SURROGATES | st.sampled_from(["<|im_start|>", "<|im_end|>"])
NUMBERS = (
    st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard", ""])
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": ROLES | ANY_JSON,
        "content": TEXT
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}))
        | ANY_JSON,
        "name": ANY_JSON,
    },
)
PLAUSIBLE = {
    "model": st.sampled_from(["fake", "gpt-4o"]) | ANY_JSON,
    "messages": st.lists(MESSAGE, max_size=3) | ANY_JSON,
    "prompt": TEXT
    | st.lists(st.integers(-5, 300), max_size=8)
    | st.lists(TEXT, max_size=2)
    | ANY_JSON,
    "max_tokens": st.integers(-2, 70) | ANY_JSON,
    "max_completion_tokens": st.integers(-2, 70) | ANY_JSON,
    "temperature": st.floats(-1, 3) | ANY_JSON,
    "top_p": st.floats(-0.5, 1.5) | ANY_JSON,
    "seed": st.integers(-(2**70), 2**70) | ANY_JSON,
    "stop": TEXT | st.lists(TEXT, max_size=20) | ANY_JSON,
    "stream": st.booleans() | ANY_JSON,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": ANY_JSON}) | ANY_JSON,
    "cache_salt": TEXT | ANY_JSON,
    "n": st.integers(0, 3) | ANY_JSON,
    "logprobs": ANY_JSON,
    "top_logprobs": ANY_JSON,
    "tools": ANY_JSON,
    "tool_choice": ANY_JSON,
    "response_format": ANY_JSON,
    "logit_bias": ANY_JSON,
    "presence_penalty": ANY_JSON,
    "user": ANY_JSON,
}
RANDOM_BODIES = st.fixed_dictionaries({}, optional=PLAUSIBLE).flatmap(
    lambda body: st.dictionaries(TEXT, ANY_JSON, max_size=2).map(lambda extra: {**extra, **body})
)
# Valid requests (so the fuzzer reaches generation, streaming and the cache), each then
# possibly hit by one field of any JSON value.
VALID = st.fixed_dictionaries(
    {"model": st.just("fake")},
    optional={
        "max_tokens": st.integers(1, 8),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "seed": st.integers(-(2**63), 2**64 - 1),
        "stop": st.lists(st.text(min_size=1, max_size=3), max_size=3),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "cache_salt": st.text(max_size=8),
    },
)
VALID_BODIES = st.tuples(
    VALID,
    st.fixed_dictionaries(
        {
            "messages": st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["system", "user"]), "content": TEXT}
                ),
                min_size=1,
                max_size=3,
            ),
            "prompt": TEXT | st.lists(st.integers(0, 255), min_size=1, max_size=8),
        }
    ),
    st.none() | st.tuples(st.sampled_from(sorted(PLAUSIBLE)), ANY_JSON),
).map(lambda parts: {**parts[0], **parts[1], **dict([parts[2]] if parts[2] else [])})
BODIES = RANDOM_BODIES | VALID_BODIES


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[App]:
    with running_app(max_tokens_limit=64, default_max_tokens=8, max_queue=64) as app:
        yield app


def check_answer(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in response.text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert all("error" not in json.loads(e[6:]) for e in events[:-1])
    else:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def post_any_body(app: App, path: str, body: Any) -> None:
    content = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    response = app.http.post(path, content=content, headers={"Content-Type": "application/json"})
    event(f"status {response.status_code}")
    check_answer(response)


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@fuzz(400)
@given(path=st.sampled_from(PATHS), body=BODIES)
def test_any_json_body_gets_a_2xx_or_an_openai_4xx(fuzzed: App, path: str, body: Any) -> None:
    post_any_body(fuzzed, path, body)


@pytest.mark.slow  # in-process, but a few thousand requests: with the full suite, in CI
@fuzz(4000)
@given(path=st.sampled_from(PATHS), body=BODIES)
def test_thousands_of_json_bodies_get_no_5xx(fuzzed: App, path: str, body: Any) -> None:
    post_any_body(fuzzed, path, body)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(path=st.sampled_from(PATHS), raw=st.binary(max_size=200))
def test_any_bytes_get_a_4xx(fuzzed: App, path: str, raw: bytes) -> None:
    response = fuzzed.http.post(path, content=raw, headers={"Content-Type": "application/json"})
    check_answer(response)


def test_the_cache_is_consistent_after_fuzzing(fuzzed: App) -> None:
    fuzzed.engine.cache.check_invariants()
    assert fuzzed.stats()["pinned_blocks"] == 0
