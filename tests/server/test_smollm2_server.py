"""The real default model behind the real server, driven by the official openai client: a
second request with the same system prompt reports cached tokens and returns the same greedy
text as a server started with ``--no-prefix-cache``."""

from __future__ import annotations

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
