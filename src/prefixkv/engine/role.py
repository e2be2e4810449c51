"""EngineRole: what a server needs from an engine, and nothing more.

The server depends on this protocol, not on :class:`~prefixkv.engine.engine.Engine`, so it
can be tested in-process over a small fake, and a batching engine can take the same place.
Importing this module loads no model library.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable
from typing import Literal, Protocol

from prefixkv.cache.protocol import PrefixCache
from prefixkv.engine.prompts import Prompt
from prefixkv.engine.request import Completion, Request, SamplingParams


class EngineRole(Protocol):
    """A model behind a prefix cache, serving validated requests."""

    @property
    def name(self) -> str:
        """The model's name (what ``/v1/models`` lists)."""
        ...

    @property
    def context_length(self) -> int:
        """Most tokens a prompt plus its completion may hold."""
        ...

    @property
    def cache(self) -> PrefixCache: ...

    def request(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        namespace: Hashable,
        default_max_tokens: int,
    ) -> Request:
        """Tokenize and validate once. Raises InvalidRequestError (naming the field) before
        touching the cache. May take long (tokenizing): callers keep it off event loops."""
        ...

    def run(self, request: Request) -> Generator[str | Completion, None, None]:
        """Text deltas, then the Completion. Closing the generator early stops the
        generation and releases everything it pinned. Runs the model: call it on a worker."""
        ...


Outcome = Literal["pending", "completed", "failed", "skipped", "stopped"]
"""How a request ended. ``skipped``: cancelled while waiting; ``stopped``: cancelled while
generating."""


class RequestCancelled(Exception):
    """The request was cancelled before it finished (client gone, or the server stopping)."""


class Sink(Protocol):
    """Where a request's results go when an engine runs it in the background (the batch
    runner). Called from the engine's thread; must not block."""

    @property
    def cancelled(self) -> bool:
        """True once the consumer gave up: the request stops at the engine's next step."""
        ...

    def deliver(self, item: str | Completion) -> None:
        """One text delta, or the final Completion."""
        ...

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """The end, whatever it was; ``error`` is passed on to the consumer when given."""
        ...
