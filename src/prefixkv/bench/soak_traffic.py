"""``prefixkv bench soak``: the clients and their mixed traffic.

Each client loops until told to stop, one request at a time, drawing its kind (seeded):

- ``doc``: a question (of ``questions`` per document) about one of the long shared documents;
  the documents' KV is larger than the pool, so answering them evicts all the time;
- ``chat``: the next turn of the client's own conversation (a shared system prompt, then its
  turns and the model's replies), begun anew after ``turns`` turns or a failed turn;
- ``unique``: a short document no request ever sent before (a cold prefill whose blocks go to
  the tiers and are evicted unused).

Half the requests (``stream_fraction``) stream; of those, ``disconnect_fraction`` close the
connection after the first chunk with text (a deliberate disconnect: the server must cancel
the request and give its blocks back). Every other outcome but a complete 200 reply counts as
an error, with its description kept.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from prefixkv.bench import workloads
from prefixkv.bench.soak_sample import ClientCounts
from prefixkv.bench.tiers_servers import ADMIN_HEADERS

KINDS = ("doc", "chat", "unique")
_KEPT_ERRORS = 20
_CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class Mix:
    model: str
    documents: tuple[str, ...]
    questions: int
    weights: tuple[float, float, float]  # of KINDS
    stream_fraction: float
    disconnect_fraction: float  # of streaming requests
    max_tokens: int
    turns: int


@dataclass
class Tally:
    """What every client did so far (one event loop: no lock needed)."""

    served: Counter[str] = field(default_factory=Counter)  # by kind
    disconnects: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by exception type or status
    first_errors: list[str] = field(default_factory=list)

    def error(self, key: str, text: str) -> None:
        self.errors[key] += 1
        if len(self.first_errors) < _KEPT_ERRORS:
            self.first_errors.append(text[:300])

    def counts(self) -> ClientCounts:
        return ClientCounts(sum(self.served.values()), self.disconnects, self.errors.total())


class Gate:
    """Lets clients start requests while open; counts the requests in flight."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.in_flight = 0

    async def enter(self) -> None:
        await self._open.wait()
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until nothing is in flight (True) or ``timeout`` seconds pass (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight == 0


class BadReply(Exception):
    """A reply that is not a complete, well-formed 200 answer."""


def _content(chunk: dict[str, Any]) -> str:
    if "error" in chunk:
        raise BadReply(f"error in stream: {str(chunk['error'])[:200]}")
    return "".join(c["delta"].get("content") or "" for c in chunk["choices"])


async def streamed(http: httpx.AsyncClient, body: dict[str, Any], drop: bool) -> str | None:
    """The reply's text, or None when ``drop`` closed the connection after its first text.
    Raises BadReply or httpx errors."""
    parts: list[str] = []
    async with http.stream("POST", _CHAT, json={**body, "stream": True}) as response:
        if response.status_code != 200:
            await response.aread()
            raise BadReply(f"status {response.status_code}: {response.text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return "".join(parts)
            text = _content(json.loads(line[6:]))
            parts.append(text)
            if drop and text:
                return None  # leaving the block unread closes the connection
    raise BadReply(f"stream ended without [DONE] after {len(parts)} chunks")


async def whole(http: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await http.post(_CHAT, json=body)
    if response.status_code != 200:
        raise BadReply(f"status {response.status_code}: {response.text[:200]}")
    reply = response.json()
    if "usage" not in reply:
        raise BadReply("no usage in the reply")
    return str(reply["choices"][0]["message"]["content"])


@dataclass
class Client:
    """One client's state: its random stream, its conversation, its unique-prompt counter."""

    index: int
    mix: Mix
    rng: random.Random
    conversation: list[dict[str, str]] = field(default_factory=list)
    sent: int = 0

    def messages(self, kind: str) -> list[dict[str, str]]:
        """The next request of ``kind`` (a chat turn is appended to the conversation)."""
        self.sent += 1
        if kind == "doc":
            d, q = (
                self.rng.randrange(len(self.mix.documents)),
                self.rng.randrange(self.mix.questions),
            )
            question = workloads.rag_question(1000 * d + q)
            return _about(self.mix.documents[d], question)
        if kind == "unique":
            seed = 1_000_000 * (self.index + 1) + self.sent
            return _about(workloads.document(seed, 6), workloads.rag_question(seed))
        if not self.conversation or len(self.conversation) > 2 * self.mix.turns:
            self.conversation = [{"role": "system", "content": workloads.SYSTEM_PROMPT}]
        ask = workloads.USER_QUESTIONS[self.rng.randrange(len(workloads.USER_QUESTIONS))]
        self.conversation.append({"role": "user", "content": f"{ask} (visitor {self.index})"})
        return list(self.conversation)


def _about(document: str, question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Answer the question using only the document."},
        {"role": "user", "content": f"Document:\n{document}\n\nQuestion: {question}"},
    ]


async def one(http: httpx.AsyncClient, client: Client, tally: Tally) -> None:
    """Send one request of a drawn kind and count its outcome in ``tally``."""
    mix, rng = client.mix, client.rng
    kind = rng.choices(KINDS, weights=mix.weights)[0]
    stream = rng.random() < mix.stream_fraction
    drop = stream and rng.random() < mix.disconnect_fraction
    body = {
        "model": mix.model,
        "messages": client.messages(kind),
        "temperature": 0,
        "max_tokens": mix.max_tokens if drop else rng.randint(4, mix.max_tokens),
    }
    try:
        text = await (streamed(http, body, drop) if stream else whole(http, body))
    except (httpx.HTTPError, BadReply, json.JSONDecodeError, KeyError, IndexError) as exc:
        tally.error(type(exc).__name__, f"{kind} stream={stream}: {type(exc).__name__}: {exc}")
        text = None
    else:
        if text is None:
            tally.disconnects += 1
        else:
            tally.served[kind] += 1
    if kind == "chat":
        if text is None:
            client.conversation = []  # a turn without its reply: begin anew
        else:
            client.conversation.append({"role": "assistant", "content": text})


async def run_client(
    url: str, client: Client, tally: Tally, gate: Gate, stop: asyncio.Event
) -> None:
    """Requests one after another until ``stop`` is set, each admitted by ``gate``."""
    timeout = httpx.Timeout(600.0, connect=30.0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, headers=ADMIN_HEADERS) as http:
        while not stop.is_set():
            await gate.enter()
            try:
                if not stop.is_set():
                    await one(http, client, tally)
            finally:
                gate.leave()
