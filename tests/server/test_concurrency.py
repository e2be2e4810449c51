"""32 concurrent clients x 3 requests each: none dropped, none mixed up, every one complete.

Each request is checked against the answer a sequential run gives for the same request. To
make "the same" exact, every client has its own cache namespace (cache_salt) and sends its
requests one after another, so each request meets the same cached prefix (hence the same
prefill split, hence bitwise the same computation) in both runs whatever the interleaving
of clients. Seeded sampling at temperature 1 makes every reply depend on its request, so a
reply delivered to the wrong client would not go unnoticed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]

CLIENTS, REQUESTS, MAX_TOKENS = 32, 3, 12

Answer = tuple[str, str | None, int, int, int]
"""text, finish_reason, prompt_tokens, completion_tokens, cached_tokens"""


def request(client: int, turn: int, run: str) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": f"Client {client} speaks in riddles about the sea."},
            {"role": "user", "content": f"Riddle {turn}, please."},
        ],
        "max_tokens": MAX_TOKENS,
        "temperature": 1.0,
        "seed": 1000 * client + turn,
        "extra_body": {"cache_salt": f"{run}-{client}"},
    }


async def ask(api: openai.AsyncOpenAI, body: dict[str, Any], stream: bool) -> Answer:
    if not stream:
        reply = await api.chat.completions.create(**body)
        usage = reply.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        choice = reply.choices[0]
        text = choice.message.content or ""
        return (text, choice.finish_reason, usage.prompt_tokens, usage.completion_tokens,
                usage.prompt_tokens_details.cached_tokens or 0)  # fmt: skip
    chunks = await api.chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True}
    )
    parts, finish, usage = [], None, None
    async for chunk in chunks:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert usage is not None and usage.prompt_tokens_details is not None
    return ("".join(parts), finish, usage.prompt_tokens, usage.completion_tokens,
            usage.prompt_tokens_details.cached_tokens or 0)  # fmt: skip


async def client_session(api: openai.AsyncOpenAI, client: int, run: str) -> list[Answer]:
    # Even turns non-streaming, odd turns streaming: both paths share the queue.
    return [await ask(api, request(client, t, run), stream=t % 2 == 1) for t in range(REQUESTS)]


async def sequential(api: openai.AsyncOpenAI) -> list[list[Answer]]:
    return [await client_session(api, c, "sequential") for c in range(CLIENTS)]


async def concurrent(api: openai.AsyncOpenAI) -> list[list[Answer]]:
    return list(
        await asyncio.gather(*(client_session(api, c, "concurrent") for c in range(CLIENTS)))
    )


def test_32_concurrent_clients_get_their_own_complete_answers(tiny_server: ServerProcess) -> None:
    async def both() -> tuple[list[list[Answer]], list[list[Answer]]]:
        async with tiny_server.async_client() as api:
            return await sequential(api), await concurrent(api)

    expected, got = asyncio.run(both())
    for client in range(CLIENTS):
        for turn in range(REQUESTS):
            _, finish, _, completion, cached = got[client][turn]
            assert got[client][turn] == expected[client][turn], (client, turn)
            assert finish in ("stop", "length") and completion >= 1
            assert finish == "stop" or completion == MAX_TOKENS
            assert (cached > 0) == (turn > 0)  # later turns reuse the client's system prompt
    texts = {answer[0] for answers in got for answer in answers}
    assert len(texts) > CLIENTS * REQUESTS * 0.9  # replies differ, so mix-ups would show
    stats = tiny_server.stats()
    assert stats["pinned_blocks"] == 0
