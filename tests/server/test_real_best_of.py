"""``best_of`` on the real ``prefixkv serve`` over the tiny model, through the official openai
client: the n returned choices are the n samples (of the ``best_of`` that ``n = best_of``
with the same seed returns) with the highest cumulative logprob, best first; logprobs are
reported only when asked; usage counts every sample generated; what cannot be honoured is a
400 naming ``best_of``, and the server serves on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]

PROMPT = "The fleet sailed at dawn"


@pytest.fixture(scope="module")
def client(tiny_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with tiny_server.client() as opened:
        yield opened


def complete(client: openai.OpenAI, **extra: Any) -> Any:
    body: Any = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 1.0}
    return client.completions.create(**{**body, **extra}, extra_body={"ignore_eos": True})


def cumulative(choice: Any) -> float:
    return float(sum(choice.logprobs.token_logprobs))


@pytest.mark.parametrize(("n", "best_of"), [(1, 4), (2, 5), (3, 3)])
def test_the_best_n_of_the_samples_are_returned_best_first(
    client: openai.OpenAI, n: int, best_of: int
) -> None:
    """best_of = n chooses nothing: the samples in their order, as ``n`` alone gives them."""
    every = complete(client, n=best_of, seed=42, logprobs=0).choices
    ranked = every if n == best_of else sorted(every, key=cumulative, reverse=True)[:n]
    assert len({round(cumulative(c), 6) for c in every}) == best_of  # no ties to hide behind
    chosen = complete(client, n=n, best_of=best_of, seed=42, logprobs=0)
    assert [c.index for c in chosen.choices] == list(range(n))
    assert [c.text for c in chosen.choices] == [c.text for c in ranked]
    assert [cumulative(c) for c in chosen.choices] == [cumulative(c) for c in ranked]
    unasked = complete(client, n=n, best_of=best_of, seed=42)
    assert [c.text for c in unasked.choices] == [c.text for c in ranked]
    assert all(c.logprobs is None for c in unasked.choices)
    assert unasked.usage is not None
    assert unasked.usage.completion_tokens == best_of * 8  # every sample, returned or not
    assert unasked.usage.prompt_tokens == complete(client, seed=1).usage.prompt_tokens


BAD: list[tuple[str, dict[str, Any]]] = [
    ("completions", {"n": 3, "best_of": 2}),
    ("completions", {"best_of": 17}),
    ("completions", {"best_of": "2"}),
    ("completions", {"best_of": 2, "stream": True}),
    ("chat", {"best_of": 2}),
]


def test_what_cannot_be_honoured_is_a_400_naming_best_of(client: openai.OpenAI) -> None:
    for api, extra in BAD:
        with pytest.raises(openai.BadRequestError) as caught:
            if api == "chat":
                messages: Any = [{"role": "user", "content": "hi"}]
                client.chat.completions.create(model="tiny", messages=messages, extra_body=extra)
            else:
                complete(client, **extra)
        assert caught.value.param == "best_of", extra
    streamed = complete(client, n=2, best_of=2, stream=True, seed=3)  # nothing to choose
    assert sorted({c.index for chunk in streamed for c in chunk.choices}) == [0, 1]
