"""``n`` > 1 on the real ``prefixkv serve`` process over the tiny model (batch runner, blocks
of 4 tokens), through the official openai client: n choices indexed 0..n-1, sample i is the
single request seeded ``seed + i``, greedy samples agree, streaming carries every choice's
index and end, usage counts the prompt once, the prompt is prefilled once (the step token
counter), a dropped stream stops every sample, and bad ``n`` is a 400 naming it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import tiny_server_process
from .harness import ServerProcess, wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow]

MESSAGES: Any = [{"role": "user", "content": "Name three ships of the line, please."}]
BLOCK = 4  # the tiny server's --block-size
FED = "prefixkv_step_tokens_sum"  # every token fed to the model, prefill and decode


@pytest.fixture(scope="module")
def client(tiny_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with tiny_server.client() as opened:
        yield opened


def sampled(client: openai.OpenAI, **extra: Any) -> Any:
    body: Any = {"model": "tiny", "prompt": "The fleet sailed at dawn", "max_tokens": 8}
    return client.completions.create(
        **{**body, "temperature": 1.0, **extra}, extra_body={"ignore_eos": True}
    )


def test_seeded_samples_are_the_single_requests_seeded_seed_plus_index(
    client: openai.OpenAI,
) -> None:
    whole = sampled(client, n=4, seed=1234)
    assert [c.index for c in whole.choices] == [0, 1, 2, 3]
    texts = [c.text for c in whole.choices]
    assert texts == [sampled(client, seed=1234 + i).choices[0].text for i in range(4)]
    assert len(set(texts)) > 1  # four seed streams, not one repeated
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 4 * 8
    assert whole.usage.prompt_tokens == sampled(client, seed=1).usage.prompt_tokens


def test_greedy_samples_agree_and_usage_counts_the_prompt_once(client: openai.OpenAI) -> None:
    one = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=6, temperature=0
    )
    many = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=6, temperature=0, n=5
    )
    assert [c.index for c in many.choices] == list(range(5))
    assert {c.message.content for c in many.choices} == {one.choices[0].message.content}
    assert one.usage is not None and many.usage is not None
    assert many.usage.prompt_tokens == one.usage.prompt_tokens
    assert many.usage.completion_tokens == 5 * one.usage.completion_tokens
    assert many.usage.total_tokens == many.usage.prompt_tokens + many.usage.completion_tokens


def test_streamed_choices_carry_their_index_and_their_own_end(client: openai.OpenAI) -> None:
    body: Any = {"model": "tiny", "messages": MESSAGES, "max_tokens": 7, "seed": 99, "n": 3}
    whole = client.chat.completions.create(**body, extra_body={"ignore_eos": True})
    chunks = list(
        client.chat.completions.create(
            **body,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    texts, ends = ["", "", ""], [[], [], []]
    for chunk in chunks[:-1]:
        assert chunk.usage is None and len(chunk.choices) == 1
        choice = chunk.choices[0]
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason is not None:
            ends[choice.index].append(choice.finish_reason)
    assert texts == [c.message.content for c in whole.choices]
    assert ends == [["length"]] * 3
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert whole.usage is not None
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == 3 * 7


@pytest.fixture(scope="module")
def serial_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The tiny model on the serial runner: the samples run one after another."""
    yield from tiny_server_process(
        tiny_model_dir, tmp_path_factory, "tiny-serial", "--backend", "serial"
    )


def assert_prefilled_once(server: ServerProcess, client: openai.OpenAI) -> None:
    """max_tokens 1: every token fed is a prompt token (the one generated is never fed)."""
    prompt = f"A prompt no other test sent, {uuid.uuid4().hex}, long enough to span blocks."
    before = server.metrics()[FED]
    whole = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=1, n=8, extra_body={"ignore_eos": True}
    )
    assert whole.usage is not None
    fed = server.metrics()[FED] - before
    length = whole.usage.prompt_tokens
    assert length > 8 * BLOCK  # so that eight prefills could not pass for one
    # Once the prompt, then each other sample at most its partial last block (recomputed).
    assert length <= fed <= length + 7 * BLOCK
    assert len(whole.choices) == 8


def test_eight_samples_prefill_the_prompt_once(
    client: openai.OpenAI, tiny_server: ServerProcess
) -> None:
    assert_prefilled_once(tiny_server, client)


def test_the_serial_runner_serves_n_from_the_prompt_it_cached(
    serial_server: ServerProcess,
) -> None:
    with serial_server.client() as serial:
        assert_prefilled_once(serial_server, serial)
        whole = sampled(serial, n=3, seed=55)
        assert [c.text for c in whole.choices] == [
            sampled(serial, seed=55 + i).choices[0].text for i in range(3)
        ]
        streamed = ["", "", ""]
        for chunk in sampled(serial, n=3, seed=55, stream=True):
            for choice in chunk.choices:
                streamed[choice.index] += choice.text
        assert streamed == [c.text for c in whole.choices]


def test_dropping_a_stream_stops_every_sample(tiny_server: ServerProcess) -> None:
    running = "prefixkv_num_requests_running"
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 2500,
        "ignore_eos": True,
        "stream": True,
        "n": 4,
        "cache_salt": "drop-n",
    }
    with (
        httpx.Client(timeout=60.0) as http,
        http.stream("POST", tiny_server.url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        seen: set[int] = set()
        while len(seen) < 4:  # every sample is generating
            line = next(lines)
            if line.startswith("data: "):
                seen.update(c["index"] for c in json.loads(line[6:])["choices"])
        assert tiny_server.metrics()[running] == 4
        lines.close()  # type: ignore[attr-defined]  # a generator, typed as an Iterator
    assert wait_for(lambda: tiny_server.metrics()[running] == 0, timeout=10)
    assert wait_for(lambda: tiny_server.stats()["pinned_blocks"] == 0, timeout=10)


def test_bad_n_is_a_400_naming_it_and_the_server_serves_on(client: openai.OpenAI) -> None:
    for n in (0, 17):
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, n=n)
        assert raised.value.param == "n"
    after = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=2, temperature=0, n=2
    )
    assert len(after.choices) == 2


def test_each_choice_reports_its_own_logprobs(client: openai.OpenAI) -> None:
    body: Any = {"model": "tiny", "messages": MESSAGES, "max_tokens": 5, "seed": 3, "n": 2}
    extra: Any = {"logprobs": True, "top_logprobs": 2, "extra_body": {"ignore_eos": True}}
    whole = client.chat.completions.create(**body, **extra)
    tokens: list[list[str]] = []
    for choice in whole.choices:
        assert choice.logprobs is not None and choice.logprobs.content is not None
        tokens.append([t.token for t in choice.logprobs.content])
    assert [len(t) for t in tokens] == [5, 5]
    streamed: list[list[str]] = [[], []]
    for chunk in client.chat.completions.create(**body, **extra, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed[choice.index] += [t.token for t in choice.logprobs.content]
    assert streamed == tokens


def test_bench_serve_n_rounds_get_n_full_samples(tiny_server: ServerProcess) -> None:
    """``prefixkv bench serve --n``'s measurement, against the real server: every round
    gets n choices of exactly max_tokens tokens (ignore_eos) and times both requests."""
    import argparse

    from prefixkv.bench.serve_n import run_n

    args = argparse.Namespace(n=3, n_rounds=2, max_tokens=5, sentences=3)
    cost = run_n(tiny_server.url, "tiny", {}, args)
    assert cost.one_tokens == (5, 5) and cost.many_tokens == (15, 15)
    assert len(cost.one_s) == len(cost.many_s) == 2 and min(cost.one_s) > 0
    assert cost.ratio > 0 and len(cost.prompt_tokens) == 4
