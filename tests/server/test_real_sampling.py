"""Logprobs, the logits controls, /tokenize and /detokenize on the real ``prefixkv serve``
process over the tiny model, through the official openai client: the shapes parse, the
numbers hold together, each control does what it says, and bad values get a 400 naming the
field while the server goes on serving."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ..engine.tiny import CHARS, SPECIALS
from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]

MESSAGES: Any = [{"role": "user", "content": "Where is the captain of this ship?"}]
EOS = SPECIALS.index("<|im_end|>")


def token_id(char: str) -> int:
    return len(SPECIALS) + CHARS.index(char)


@pytest.fixture(scope="module")
def client(tiny_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with tiny_server.client() as opened:
        yield opened


def chat(client: openai.OpenAI, **extra: Any) -> Any:
    body: Any = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    return client.chat.completions.create(**{**body, **extra})


def test_chat_logprobs_streaming_and_not(client: openai.OpenAI) -> None:
    whole = chat(client, logprobs=True, top_logprobs=5, extra_body={"ignore_eos": True})
    choice = whole.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert whole.usage is not None and len(content) == whole.usage.completion_tokens == 8
    assert "".join(t.token for t in content) == choice.message.content  # one char each, no EOS
    for item in content:
        assert len(item.top_logprobs) == 5
        assert item.logprob == max(t.logprob for t in item.top_logprobs)  # greedy
        assert item.token == item.top_logprobs[0].token
        assert bytes(item.bytes or []) == item.token.encode()
    chunks = list(
        chat(client, logprobs=True, top_logprobs=5, stream=True, extra_body={"ignore_eos": True})
    )
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(
        math.isclose(a.logprob, b.logprob, abs_tol=1e-4)
        for a, b in zip(streamed, content, strict=True)
    )
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(c.choices[0].logprobs is not None for c in text_chunks)  # each with its tokens
    plain = chat(client)
    assert plain.choices[0].logprobs is None


def test_completions_logprobs_streaming_and_not(client: openai.OpenAI) -> None:
    common: Any = {"model": "tiny", "prompt": "The cat sat on", "max_tokens": 6, "temperature": 0}
    whole = client.completions.create(**common, logprobs=3, extra_body={"ignore_eos": True})
    lp = whole.choices[0].logprobs
    assert (
        lp is not None
        and lp.tokens
        and lp.token_logprobs
        and lp.top_logprobs
        and lp.text_offset is not None
    )
    assert "".join(lp.tokens) == whole.choices[0].text and len(lp.tokens) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 3 <= len(top) <= 4 and top[token] == logprob == max(top.values())
    chunks = list(
        client.completions.create(
            **common, logprobs=3, stream=True, extra_body={"ignore_eos": True}
        )
    )
    tokens = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.tokens or []
    ]
    offsets = [
        o
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for o in c.choices[0].logprobs.text_offset or []
    ]
    assert tokens == lp.tokens and offsets == lp.text_offset


def test_a_full_top_list_holds_all_the_mass(client: openai.OpenAI) -> None:
    favoured = {str(token_id(c)): 100 for c in CHARS[:20]}
    reply = chat(client, logprobs=True, top_logprobs=20, logit_bias=favoured, max_tokens=3)
    content = reply.choices[0].logprobs.content
    for item in content:
        assert item.token in CHARS[:20]
        assert math.isclose(sum(math.exp(t.logprob) for t in item.top_logprobs), 1.0, rel_tol=1e-6)


def test_logit_bias_forces_and_forbids(client: openai.OpenAI) -> None:
    forced = chat(client, logit_bias={str(token_id("q")): 100}, temperature=1.5, max_tokens=5)
    assert forced.choices[0].message.content == "qqqqq"
    first = chat(client, max_tokens=1, extra_body={"ignore_eos": True}).choices[0].message.content
    assert first
    other = chat(
        client,
        max_tokens=1,
        logit_bias={str(token_id(first)): -100},
        extra_body={"ignore_eos": True},
    )
    assert other.choices[0].message.content != first


def test_min_tokens_holds_eos_off_and_stop_token_ids_end_the_reply(
    client: openai.OpenAI,
) -> None:
    ends = {str(EOS): 100}
    assert chat(client, logit_bias=ends).usage.completion_tokens == 1
    held = chat(client, logit_bias=ends, extra_body={"min_tokens": 3})
    assert held.choices[0].finish_reason == "stop" and held.usage.completion_tokens == 4
    free = chat(client, max_tokens=12, extra_body={"ignore_eos": True}).choices[0].message.content
    stopper = free[5]
    stopped = chat(
        client,
        max_tokens=12,
        extra_body={"stop_token_ids": [token_id(stopper)], "ignore_eos": True},
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == free[: free.index(stopper)]


def test_penalties_change_the_reply(client: openai.OpenAI) -> None:
    common: Any = {"max_tokens": 16, "extra_body": {"ignore_eos": True}}
    plain = chat(client, **common).choices[0].message.content
    assert len(set(plain)) < len(plain)  # the tiny model repeats itself: something to penalise
    for penalty in ({"presence_penalty": 2}, {"frequency_penalty": 2}):
        assert chat(client, **common, **penalty).choices[0].message.content != plain
    repeated = chat(client, max_tokens=16, extra_body={"ignore_eos": True, "repetition_penalty": 3})
    assert repeated.choices[0].message.content != plain


BAD: list[tuple[dict[str, Any], str]] = [
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -9}, "frequency_penalty"),
    ({"logit_bias": {"100000": 1}}, "logit_bias"),
    ({"logit_bias": {"7": 300}}, "logit_bias"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
    ({"extra_body": {"min_tokens": 9}}, "min_tokens"),
    ({"extra_body": {"stop_token_ids": [100000]}}, "stop_token_ids"),
    ({"extra_body": {"prompt_logprobs": -1}}, "prompt_logprobs"),
]


def test_bad_values_get_a_400_naming_the_field(client: openai.OpenAI) -> None:
    for values, param in BAD:
        with pytest.raises(openai.BadRequestError) as caught:
            chat(client, **values)
        assert caught.value.param == param, values
        assert chat(client, max_tokens=2).choices[0].finish_reason  # still serving


def test_tokenize_and_detokenize(tiny_server: ServerProcess, client: openai.OpenAI) -> None:
    said = tiny_server.post("/tokenize", json={"model": "tiny", "prompt": "Hello, cat"}).json()
    assert said["count"] == len(said["tokens"]) == 10 and said["max_model_len"] == 4096
    back = tiny_server.post("/detokenize", json={"model": "tiny", "tokens": said["tokens"]}).json()
    assert back == {"prompt": "Hello, cat"}
    asked = tiny_server.post("/tokenize", json={"messages": MESSAGES}).json()
    bare = tiny_server.post(
        "/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False}
    ).json()
    assert asked["count"] == chat(client, max_tokens=1).usage.prompt_tokens
    assert bare["tokens"] == asked["tokens"][: bare["count"]] and bare["count"] < asked["count"]
    refused = tiny_server.post("/detokenize", json={"tokens": [1, 100000]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tokens"
    refused = tiny_server.post("/tokenize", json={"prompt": 5})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt"
