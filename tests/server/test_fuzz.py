"""Fuzzing the HTTP API in-process: bodies built from the API's own fields with values of any
JSON type (and plausible ones, so that some requests get through to generation), plus raw
bytes. Whatever arrives, the answer is a 2xx or a 4xx in OpenAI's shape, never a 5xx, and
the cache stays consistent.

Two servers take the bodies: the app over the FakeEngine (one-character tokenizer, no model:
400 bodies, 4,000 more in a slow test, and 300 raw byte strings), and the app over the real
engine as ``prefixkv serve`` runs it (the batch runner, the default kernels) on a tiny random
Llama with SmolLM2's own tokenizer and chat template (REAL_BODIES bodies); after it, the real
server still answers a greedy request exactly as the serial engine does, nothing is pinned,
and the cache's invariants hold."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from prefixkv.cache import NullCache, PrefixKVCache
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.kvbridge import layout_of
from prefixkv.engine.linear import linear_kernel
from prefixkv.server import ServerSettings, create_app
from prefixkv.server.steps import StepMetrics

from ..engine.tiny import smollm2_tokenizer, tiny_llama_for
from .conftest import running_app
from .harness import wait_for

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
    "model": st.sampled_from(["fake", "tiny-smollm2", "gpt-4o"]) | ANY_JSON,
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
    "frequency_penalty": ANY_JSON,
    "repetition_penalty": ANY_JSON,
    "min_tokens": ANY_JSON,
    "stop_token_ids": ANY_JSON,
    "ignore_eos": ANY_JSON,
    "prompt_logprobs": st.integers(-1, 3) | ANY_JSON,
    "best_of": st.integers(0, 4) | ANY_JSON,
    "user": ANY_JSON,
}
RANDOM_BODIES = st.fixed_dictionaries({}, optional=PLAUSIBLE).flatmap(
    lambda body: st.dictionaries(TEXT, ANY_JSON, max_size=2).map(lambda extra: {**extra, **body})
)


def valid_bodies(model: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid requests for ``model`` (so the fuzzer reaches generation, streaming and the
    cache), each then possibly hit by one field of any JSON value."""
    valid = st.fixed_dictionaries(
        {"model": st.just(model)},
        optional={
            "max_tokens": st.integers(1, 8),
            "temperature": st.floats(0, 2),
            "top_p": st.floats(0.01, 1),
            "seed": st.integers(-(2**63), 2**64 - 1),
            "stop": st.lists(st.text(min_size=1, max_size=3), max_size=3),
            "stream": st.booleans(),
            "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
            "cache_salt": st.text(max_size=8),
            "presence_penalty": st.floats(-2, 2),
            "frequency_penalty": st.floats(-2, 2),
            "repetition_penalty": st.floats(0.1, 2),
            "logit_bias": st.dictionaries(st.integers(0, 60).map(str), st.floats(-100, 100)),
            "min_tokens": st.integers(0, 1),
            "stop_token_ids": st.lists(st.integers(0, 60), max_size=3),
            "ignore_eos": st.booleans(),
        },
    )
    return st.tuples(
        valid,
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


BODIES = RANDOM_BODIES | valid_bodies("fake")
REAL_MODEL = "tiny-smollm2"
# Valid bodies twice as often as for the fake engine: the real engine is what is under test.
REAL_BODIES_STRATEGY = RANDOM_BODIES | valid_bodies(REAL_MODEL) | valid_bodies(REAL_MODEL)


FAKE_BODIES = 400
"""JSON bodies the fast test posts to the app over the FakeEngine."""
MANY_FAKE_BODIES = 4000
"""JSON bodies the slow test posts to it."""
RAW_BODIES = 300
"""Byte strings (mostly not JSON) posted to it."""
REAL_BODIES = 300
"""JSON bodies posted to the app over the real engine."""
REAL_CONTEXT = 256
"""The tiny SmolLM2-shaped model's context; its pool holds fewer tokens (REAL_POOL_BLOCKS)."""
REAL_POOL_BLOCKS = 40
PROBE = "The capital of France is"
"""A greedy request the real server must still answer as the serial engine does."""


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


def post_any_body(http: TestClient, path: str, body: Any) -> int:
    """Post ``body`` as JSON (NaN, infinities and lone surrogates included), check the answer;
    its status."""
    content = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    response = http.post(path, content=content, headers={"Content-Type": "application/json"})
    event(f"status {response.status_code}")
    check_answer(response)
    return int(response.status_code)


def fuzz(
    http: TestClient, examples: int, bodies: st.SearchStrategy[Any]
) -> collections.Counter[int]:
    """Post ``examples`` bodies drawn from ``bodies`` (to either path) and check each answer;
    how many got each status. Raises on the first bad answer (hypothesis then shrinks it)."""
    statuses: collections.Counter[int] = collections.Counter()

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(path=st.sampled_from(PATHS), body=bodies)
    def post(path: str, body: Any) -> None:
        statuses[post_any_body(http, path, body)] += 1

    post()
    assert sum(statuses.values()) == examples  # the count README states is the count run
    return statuses


def check_consistent(engine: Any, http: TestClient) -> None:
    """Nothing pinned once every answer is in, the cache's invariants hold, and the server
    still answers."""
    assert wait_for(lambda: engine.cache.stats().pinned_blocks == 0)
    engine.cache.check_invariants()
    assert http.get("/health").json() == {"status": "ok"}


def test_any_json_body_gets_a_2xx_or_an_openai_4xx() -> None:
    with running_app(max_tokens_limit=64, default_max_tokens=8, max_queue=64) as app:
        statuses = fuzz(app.http, FAKE_BODIES, BODIES)
        check_consistent(app.engine, app.http)
    assert statuses[200] >= FAKE_BODIES // 20, statuses  # some reach generation
    print(f"fake engine: {FAKE_BODIES} bodies, statuses {dict(sorted(statuses.items()))}")


@pytest.mark.slow  # in-process, but a few thousand requests: with the full suite, in CI
def test_thousands_of_json_bodies_get_no_5xx() -> None:
    with running_app(max_tokens_limit=64, default_max_tokens=8, max_queue=64) as app:
        statuses = fuzz(app.http, MANY_FAKE_BODIES, BODIES)
        check_consistent(app.engine, app.http)
    assert statuses[200] >= MANY_FAKE_BODIES // 20, statuses


def test_any_bytes_get_a_4xx() -> None:
    with running_app(max_tokens_limit=64, default_max_tokens=8, max_queue=64) as app:

        @settings(max_examples=RAW_BODIES, deadline=None)
        @given(path=st.sampled_from(PATHS), raw=st.binary(max_size=200))
        def post(path: str, raw: bytes) -> None:
            headers = {"Content-Type": "application/json"}
            check_answer(app.http.post(path, content=raw, headers=headers))

        post()
        check_consistent(app.engine, app.http)


@contextmanager
def real_app() -> Iterator[tuple[Engine, TestClient, str]]:
    """The app as ``prefixkv serve`` builds it (the batch runner, the default linear and
    attention kernels, a pool smaller than the context) over a tiny random Llama with
    SmolLM2's tokenizer; with it, the serial uncached engine's greedy answer to PROBE."""
    tokenizer = smollm2_tokenizer()
    model = tiny_llama_for(tokenizer, REAL_CONTEXT)
    linear_kernel("auto", model).install(model)  # as Engine.from_pretrained does
    layout = layout_of(model.config, torch.float32)
    pool = PrefixKVCache(layout, 4, layout.block_bytes(4) * REAL_POOL_BLOCKS)
    engine = Engine(model, tokenizer, pool, name=REAL_MODEL)
    probe = engine.with_cache(NullCache(layout, 4)).generate(PROBE, max_tokens=8).text
    steps = StepMetrics()
    runner = BatchRunner(engine, BatchLimits(max_running=8, max_batch_tokens=64), steps.observe)
    settings_ = ServerSettings(
        model_names=(REAL_MODEL,),
        allowed_hosts=("testserver",),
        max_tokens_limit=64,
        default_max_tokens=8,
        max_queue=64,
    )
    with TestClient(create_app(engine, settings_, runner, steps, threads=1)) as http:
        yield engine, http, probe


def test_the_real_engine_gets_any_json_body_and_still_answers_exactly() -> None:
    with real_app() as (engine, http, probe):
        statuses = fuzz(http, REAL_BODIES, REAL_BODIES_STRATEGY)
        check_consistent(engine, http)
        body = {"model": REAL_MODEL, "prompt": PROBE, "max_tokens": 8, "temperature": 0}
        answer = http.post("/v1/completions", json=body)
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == probe
    assert statuses[200] >= REAL_BODIES // 20, statuses  # some reach generation
    print(f"real engine: {REAL_BODIES} bodies, statuses {dict(sorted(statuses.items()))}")
