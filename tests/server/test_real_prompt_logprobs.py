"""vLLM's ``prompt_logprobs`` on the real ``prefixkv serve`` over the tiny model, through the
official openai client: each prompt token's logprob, rank and top alternatives equal the
model's own (a full forward in this process, the reference), over a prompt longer than one
scoring chunk; a cached prompt gives the same answer (no cached KV is read for them) and the
generation is unchanged; chat carries them at the top; bad values and streaming are 400s
naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from prefixkv.engine.prompt_logprobs import CHUNK

from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]

PROMPT = [5 + (i * 7) % 40 for i in range(CHUNK + 44)]  # token ids: two scoring chunks
TOLERANCE = 1e-4  # the server's chunked, cached forward against one whole forward


@pytest.fixture(scope="module")
def client(tiny_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with tiny_server.client() as opened:
        yield opened


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> torch.Tensor:
    """``[len(PROMPT) - 1, vocab]``: the log-probabilities of each next prompt token."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    with torch.inference_mode():
        logits = model(torch.tensor([PROMPT])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def complete(client: openai.OpenAI, **extra: Any) -> Any:
    return client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, extra_body=extra
    )


def test_each_prompt_token_has_the_models_logprob_rank_and_top(
    client: openai.OpenAI, reference: torch.Tensor
) -> None:
    reply = complete(client, prompt_logprobs=3, n=2)
    (first, second) = [c.model_dump()["prompt_logprobs"] for c in reply.choices]
    assert first == second and len(first) == len(PROMPT) and first[0] is None
    for position, (token, entries) in enumerate(zip(PROMPT[1:], first[1:], strict=True)):
        row = reference[position]
        own = entries[str(token)]
        assert abs(own["logprob"] - float(row[token])) < TOLERANCE
        assert own["rank"] == int((row >= row[token]).sum())
        values = torch.topk(row, 3).values
        top = {k: v for k, v in entries.items() if k != str(token) or own["rank"] <= 3}
        assert sorted(v["rank"] for v in top.values()) == [1, 2, 3]  # and the token's own
        assert len(entries) == 3 + (own["rank"] > 3)
        for key, value in top.items():
            assert abs(value["logprob"] - float(row[int(key)])) < TOLERANCE
            assert abs(value["logprob"] - float(values[value["rank"] - 1])) < TOLERANCE


def test_a_cached_prompt_gives_the_same_logprobs_and_the_same_text(client: openai.OpenAI) -> None:
    plain = complete(client)  # caches the prompt's blocks
    asked = complete(client, prompt_logprobs=0)
    again = complete(client, prompt_logprobs=0)
    assert asked.usage.prompt_tokens_details.cached_tokens > CHUNK  # the generation reused it
    assert asked.choices[0].text == again.choices[0].text == plain.choices[0].text
    scores = asked.choices[0].model_dump()["prompt_logprobs"]
    assert scores == again.choices[0].model_dump()["prompt_logprobs"]
    assert all(len(entries) == 1 for entries in scores[1:])  # the prompt token alone
    assert plain.choices[0].model_dump().get("prompt_logprobs") is None


def test_chat_carries_them_at_the_top(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Hello there"}]
    reply = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=2, extra_body={"prompt_logprobs": 1}
    )
    scores = reply.model_dump()["prompt_logprobs"]
    assert reply.usage is not None and len(scores) == reply.usage.prompt_tokens
    assert scores[0] is None and all(1 <= len(entries) <= 2 for entries in scores[1:])


@pytest.mark.parametrize("value", [-1, 21, "2", True])
def test_bad_values_are_400s_naming_the_field(client: openai.OpenAI, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, prompt_logprobs=value)
    assert caught.value.param == "prompt_logprobs"


def test_streaming_is_a_400_and_the_server_serves_on(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(
            model="tiny", prompt="Hi", max_tokens=2, stream=True, extra_body={"prompt_logprobs": 1}
        )
    assert caught.value.param == "prompt_logprobs"
    assert complete(client).choices[0].finish_reason
