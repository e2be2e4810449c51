"""The real ``prefixkv serve`` process on the tiny model, driven by the official openai client:
the wire as a client sees it, on the engine that really generates (the in-process tests use a
fake engine)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]

MESSAGES: Any = [
    {"role": "system", "content": "You are a ship's cat. Answer in meows and purrs only."},
    {"role": "user", "content": "Where is the captain?"},
]


def test_chat_streaming_and_not_agree_then_hit(tiny_server: ServerProcess) -> None:
    client = tiny_server.client()
    common: Any = {"model": "tiny", "messages": MESSAGES, "max_tokens": 10, "temperature": 0}
    # Distinct salts: both requests start cold, so they compute the very same thing.
    whole = client.chat.completions.create(**common, extra_body={"cache_salt": "real-1"})
    assert whole.usage is not None and whole.usage.prompt_tokens_details is not None
    assert whole.usage.prompt_tokens_details.cached_tokens == 0
    chunks = list(
        client.chat.completions.create(
            **common,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"cache_salt": "real-2"},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    again = client.chat.completions.create(**common, extra_body={"cache_salt": "real-1"})
    assert again.choices[0].message.content == whole.choices[0].message.content
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert 0 < (again.usage.prompt_tokens_details.cached_tokens or 0) < again.usage.prompt_tokens


def test_completions_from_token_ids(tiny_server: ServerProcess) -> None:
    client = tiny_server.client()
    ids = [5 + (i % 60) for i in range(20)]
    reply = client.completions.create(model="tiny", prompt=ids, max_tokens=4, temperature=0)
    assert reply.usage is not None and reply.usage.prompt_tokens == len(ids)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_openai_client_sees_typed_errors(tiny_server: ServerProcess) -> None:
    client = tiny_server.client()
    user: Any = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-17", messages=user)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model="tiny", messages=user, temperature=3)
    assert hot.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model="tiny", prompt="a" * 5000)
    assert long.value.code == "context_length_exceeded"
