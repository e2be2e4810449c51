"""Streaming clients for ``prefixkv bench serve``: the official ``openai`` client, greedy,
timing every chunk that carries text.

TTFT is the time to the first chunk with text, not to the first chunk: transformers serve
sends its ``role`` chunk before generating anything, prefixkv sends an empty one with the
first token. Inter-token latency is every gap between consecutive text chunks of one reply.
Both include time spent queued, as users feel it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import openai

from prefixkv.bench.workloads import Request

WARMUP = Request((("user", "Say hello."),), "warmup")


@dataclass(frozen=True)
class Reply:
    text: str
    ttft: float  # seconds to the first chunk with text (or to the end, for an empty reply)
    latency: float
    gaps: tuple[float, ...]  # seconds between consecutive chunks with text
    prompt_tokens: int
    cached_tokens: int | None  # None: the server does not report it
    completion_tokens: int


@dataclass(frozen=True)
class Phase:
    """One (setting, clients) run: replies in workload order and the run's wall time."""

    setting: str
    clients: int
    replies: tuple[Reply, ...]
    seconds: float


def gaps(times: list[float]) -> tuple[float, ...]:
    """Differences between consecutive arrival times."""
    return tuple(b - a for a, b in pairwise(times))


async def ask(api: openai.AsyncOpenAI, model: str, request: Request, max_tokens: int) -> Reply:
    """One streamed, greedy chat completion, timed on arrival of each chunk."""
    messages: Any = request.chat()  # plain dicts; the client's TypedDicts are the same shape
    start = time.perf_counter()
    stream = await api.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals, parts, usage = [], [], None
    async for chunk in stream:
        text = "".join(c.delta.content or "" for c in chunk.choices)
        if text:
            arrivals.append(time.perf_counter() - start)
            parts.append(text)
        usage = chunk.usage or usage
    latency = time.perf_counter() - start
    if usage is None:
        raise RuntimeError("the server sent no usage")
    details = usage.prompt_tokens_details
    return Reply(
        text="".join(parts),
        ttft=arrivals[0] if arrivals else latency,
        latency=latency,
        gaps=gaps(arrivals),
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=None if details is None else details.cached_tokens,
        completion_tokens=usage.completion_tokens,
    )


async def drive(
    url: str,
    model: str,
    workload: list[Request],
    clients: int,
    max_tokens: int,
    on_reply: Callable[[], None] = lambda: None,
    headers: Mapping[str, str] | None = None,
) -> tuple[tuple[Reply, ...], float]:
    """``clients`` concurrent clients; client c sends requests c, c + clients, ... in turn;
    ``headers`` go with every request.

    Returns the replies in workload order and the wall time from the first request sent to
    the last reply received."""
    replies: dict[int, Reply] = {}
    async with api_client(url, headers) as api:

        async def client(first: int) -> None:
            for i in range(first, len(workload), clients):
                replies[i] = await ask(api, model, workload[i], max_tokens)
                on_reply()

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        seconds = time.perf_counter() - start
    return tuple(replies[i] for i in range(len(workload))), seconds


async def warm_up(
    url: str, model: str, max_tokens: int, headers: Mapping[str, str] | None = None
) -> None:
    """One request with the workload's sampling settings: transformers serve keeps the first
    request's settings for every later one, and first calls pay one-off costs."""
    async with api_client(url, headers) as api:
        await ask(api, model, WARMUP, max_tokens)


def api_client(url: str, headers: Mapping[str, str] | None) -> openai.AsyncOpenAI:
    """The benchmarks' client of the server at ``url``: no retries, ``headers`` on every
    request."""
    return openai.AsyncOpenAI(
        base_url=url + "/v1",
        api_key="none",
        max_retries=0,
        timeout=3600.0,
        default_headers=dict(headers or {}),
    )
