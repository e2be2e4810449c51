"""The clients of ``prefixkv bench fleet``: :mod:`prefixkv.bench.serve_client`'s streamed
greedy requests, sent to the router, each retried by the client when it fails.

The router retries what it can (a worker it cannot connect to); a reply cut off after its
first bytes (a replica killed mid-stream) reaches the client as an error, and the client
sends the request again, up to ``attempts`` times in all. Every failed attempt is counted
with its error; a request is *lost* only when every attempt failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
import openai

from prefixkv.bench.serve_client import Reply, api_client, ask
from prefixkv.bench.workloads import Request


@dataclass(frozen=True)
class Outcome:
    """One request of the workload: its reply (None: lost, every attempt failed), the
    errors of its failed attempts in order, and the seconds those attempts took."""

    reply: Reply | None
    failures: tuple[str, ...]
    retry_seconds: float

    @property
    def ttft(self) -> float | None:
        """Seconds to the first text as the user felt it: failed attempts included."""
        return None if self.reply is None else self.retry_seconds + self.reply.ttft


async def ask_retrying(
    api: openai.AsyncOpenAI, model: str, request: Request, max_tokens: int, attempts: int
) -> Outcome:
    """``request`` sent until one attempt succeeds or ``attempts`` have failed."""
    failures: list[str] = []
    start = time.perf_counter()
    for _ in range(attempts):
        began = time.perf_counter()
        try:
            reply = await ask(api, model, request, max_tokens)
        except (openai.APIError, httpx.HTTPError, RuntimeError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        return Outcome(reply, tuple(failures), began - start)
    return Outcome(None, tuple(failures), time.perf_counter() - start)


async def drive_retrying(
    url: str,
    model: str,
    workload: list[Request],
    clients: int,
    max_tokens: int,
    attempts: int,
    headers: Mapping[str, str],
    on_done: Callable[[int], None] = lambda done: None,
) -> tuple[tuple[Outcome, ...], float]:
    """``clients`` concurrent clients through the router at ``url``; client c sends requests
    c, c + clients, ... in turn (as :func:`~prefixkv.bench.serve_client.drive` does).
    ``on_done(n)`` runs after the n-th request finishes (the kill test kills a replica
    there). Returns the outcomes in workload order and the wall time."""
    outcomes: dict[int, Outcome] = {}
    async with api_client(url, headers) as api:

        async def client(first: int) -> None:
            for i in range(first, len(workload), clients):
                outcomes[i] = await ask_retrying(api, model, workload[i], max_tokens, attempts)
                on_done(len(outcomes))

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        seconds = time.perf_counter() - start
    return tuple(outcomes[i] for i in range(len(workload))), seconds
