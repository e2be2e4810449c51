"""The real default model behind the real server, driven by the official openai client: a
second request with the same system prompt reports cached tokens and returns the same greedy
text as a server started with ``--no-prefix-cache``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from prefixkv.bench.workloads import SYSTEM_PROMPT

from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.smollm2, pytest.mark.slow]

MAX_TOKENS = 16
QUESTIONS = ["When are you open on Mondays?", "Can I take a map home with me?"]
DOCUMENT = (
    "The Northern Archive holds maps, letters and parish records from six centuries. Its "
    "reading room seats forty people, and copies of any document can be ordered at the desk. "
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    logs = tmp_path_factory.mktemp("smollm2-logs")
    common = ["--model", "smollm2", "--cache-bytes", "128MiB"]
    # Both load at once; requests then go to one server at a time.
    pending = {
        "cached": ServerProcess(common, logs / "cached.log"),
        "plain": ServerProcess([*common, "--no-prefix-cache"], logs / "plain.log"),
    }
    started = {name: server.wait_ready(timeout=300) for name, server in pending.items()}
    yield started
    for server in started.values():
        assert server.stop() == 0, server.output()


def chat(client: openai.OpenAI, question: str, stream: bool) -> tuple[str, int]:
    """Greedy reply text and cached prompt tokens, streamed or not."""
    messages: Any = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    common: Any = {"model": "smollm2", "messages": messages, "max_tokens": MAX_TOKENS}
    if not stream:
        reply = client.chat.completions.create(**common, temperature=0)
        usage = reply.usage
        text = reply.choices[0].message.content or ""
    else:
        chunks = list(
            client.chat.completions.create(
                **common, temperature=0, stream=True, stream_options={"include_usage": True}
            )
        )
        usage = chunks[-1].usage
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.completion_tokens >= 1
    return text, usage.prompt_tokens_details.cached_tokens or 0


def complete(client: openai.OpenAI, prompt: str, stream: bool) -> tuple[str, int]:
    common: Any = {"model": "smollm2", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
    if not stream:
        reply = client.completions.create(**common)
        usage, text = reply.usage, reply.choices[0].text
    else:
        chunks = list(
            client.completions.create(**common, stream=True, stream_options={"include_usage": True})
        )
        usage = chunks[-1].usage
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert usage is not None and usage.prompt_tokens_details is not None
    return text, usage.prompt_tokens_details.cached_tokens or 0


def test_chat_second_request_hits_and_matches_uncached(servers: dict[str, ServerProcess]) -> None:
    cached, plain = servers["cached"].client(), servers["plain"].client()
    first_text, first_hit = chat(cached, QUESTIONS[0], stream=False)
    second_text, second_hit = chat(cached, QUESTIONS[1], stream=True)
    assert first_hit == 0 and second_hit > 0
    assert first_text.strip() and second_text.strip()
    assert chat(plain, QUESTIONS[0], stream=True) == (first_text, 0)
    assert chat(plain, QUESTIONS[1], stream=False) == (second_text, 0)


def test_completions_second_request_hits_and_matches_uncached(
    servers: dict[str, ServerProcess],
) -> None:
    cached, plain = servers["cached"].client(), servers["plain"].client()
    prompts = [DOCUMENT + "Question: what can be ordered? Answer:", DOCUMENT + "Summary:"]
    first_text, first_hit = complete(cached, prompts[0], stream=True)
    second_text, second_hit = complete(cached, prompts[1], stream=False)
    assert first_hit == 0 and second_hit > 0
    assert complete(plain, prompts[0], stream=False) == (first_text, 0)
    assert complete(plain, prompts[1], stream=True) == (second_text, 0)
    assert servers["plain"].stats()["used_blocks"] == 0  # its pool only holds running KV
    assert servers["cached"].stats()["pinned_blocks"] == 0


def test_logprobs_and_seeded_penalties_agree_cached_or_not(
    servers: dict[str, ServerProcess],
) -> None:
    """Logprobs and seeded sampling with penalties: the same from a cached prefix as from
    none (the second request to the cached server hits the first one's blocks)."""
    messages: Any = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": QUESTIONS[0]},
    ]
    common: Any = {
        "model": "smollm2",
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.9,
        "seed": 11,
        "presence_penalty": 0.8,
        "frequency_penalty": 0.4,
        "logprobs": True,
        "top_logprobs": 3,
        "extra_body": {"repetition_penalty": 1.2},
    }
    with servers["cached"].client() as cached, servers["plain"].client() as plain:
        cached.chat.completions.create(**{**common, "max_tokens": 1})
        hit = cached.chat.completions.create(**common)
        cold = plain.chat.completions.create(**common)
    assert hit.usage is not None and hit.usage.prompt_tokens_details is not None
    assert (hit.usage.prompt_tokens_details.cached_tokens or 0) > 0
    assert hit.choices[0].message.content == cold.choices[0].message.content
    ours, theirs = hit.choices[0].logprobs, cold.choices[0].logprobs
    assert ours is not None and theirs is not None and ours.content and theirs.content
    for a, b in zip(ours.content, theirs.content, strict=True):
        assert a.token == b.token and abs(a.logprob - b.logprob) < 1e-3


def test_partial_utf8_tokens_report_their_bytes(servers: dict[str, ServerProcess]) -> None:
    server = servers["cached"]
    emoji = "\U0001f642"
    ids = server.post("/tokenize", json={"prompt": emoji}).json()["tokens"]
    assert len(ids) >= 2  # byte-level BPE splits it: each piece is part of a character
    with server.client() as client:
        reply = client.completions.create(
            model="smollm2",
            prompt="Faces: ",
            max_tokens=1,
            temperature=0,
            logprobs=len(ids),
            logit_bias={str(t): 100 for t in ids},
        )
        chat = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Smile!"}],
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=len(ids),
            logit_bias={str(t): 100 for t in ids},
        )
    top = reply.choices[0].logprobs
    assert top is not None and top.top_logprobs and all("\ufffd" in t for t in top.top_logprobs[0])
    content = chat.choices[0].logprobs
    assert content is not None and content.content
    pieces = [bytes(c.bytes or []) for c in content.content[0].top_logprobs]
    assert all("\ufffd" in c.token for c in content.content[0].top_logprobs)
    assert b"".join(sorted(pieces, key=emoji.encode().index)) == emoji.encode()


@pytest.mark.parametrize("stream", [False, True])
def test_a_json_schema_reply_validates(servers: dict[str, ServerProcess], stream: bool) -> None:
    """SmolLM2 under a strict json_schema, sampled with a seed: the reply parses and follows
    the schema (checked by hand: jsonschema is not a dependency), finish_reason stop."""
    pytest.importorskip("llguidance", reason="the grammar extra is not installed")
    schema = {
        "type": "object",
        "properties": {
            "opens": {"type": "string", "pattern": "^[0-9]{1,2}:[0-9]{2}$"},
            "days": {"type": "array", "items": {"enum": ["Mon", "Tue", "Wed"]}, "maxItems": 3},
            "seats": {"type": "integer", "minimum": 1, "maximum": 100},
        },
        "required": ["opens", "days", "seats"],
        "additionalProperties": False,
    }
    body: Any = {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": DOCUMENT},
            {"role": "user", "content": "When does the archive open, and how many seats?"},
        ],
        "max_tokens": 80,
        "temperature": 0.7,
        "seed": 5,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "archive", "schema": schema, "strict": True},
        },
    }
    with servers["cached"].client() as client:
        if stream:
            chunks = [c for c in client.chat.completions.create(**body, stream=True) if c.choices]
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            choice = client.chat.completions.create(**body).choices[0]
            text, finish = choice.message.content or "", choice.finish_reason
    assert finish == "stop", text
    value = json.loads(text)
    assert set(value) == {"opens", "days", "seats"}
    assert re.fullmatch(r"[0-9]{1,2}:[0-9]{2}", value["opens"])
    assert isinstance(value["days"], list) and len(value["days"]) <= 3
    assert all(day in ("Mon", "Tue", "Wed") for day in value["days"])
    assert type(value["seats"]) is int and 1 <= value["seats"] <= 100
