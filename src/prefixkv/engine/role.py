"""EngineRole and Runner: what a server needs from an engine and from what runs its
requests, and nothing more; Sink: where a request's results go.

The server depends on these protocols, not on :class:`~prefixkv.engine.engine.Engine` or a
runner class, so it can be tested in-process over small fakes. Every request runs through a
runner's ``submit(request, sink)``: the serial one (:mod:`prefixkv.engine.serial`) or the
batch one (:mod:`prefixkv.engine.batch.runner`). Importing this module loads no model library.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Literal, Protocol

from prefixkv.cache.protocol import BlockStore
from prefixkv.engine.logprob_records import PromptTokenLogprob, TokenLogprob
from prefixkv.engine.prompts import Prompt
from prefixkv.engine.request import Completion, Request, SamplingParams
from prefixkv.tokens import TokenBytes


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
    def cache(self) -> BlockStore: ...

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

    def tokenize(self, prompt: Prompt, *, add_generation_prompt: bool = True) -> TokenBytes:
        """``prompt``'s ids as a request would carry them (context not checked); raises
        InvalidRequestError. May take long, as ``request``."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids, special tokens shown; raises InvalidRequestError."""
        ...

    def prompt_logprobs(self, ids: TokenBytes, top: int) -> tuple[PromptTokenLogprob, ...]:
        """For each token of ``ids`` after the first: its logprob, rank and ``top``
        likeliest alternatives, from a prefill that reads no cached KV. Takes as long as a
        prefill: callers keep it off event loops."""
        ...


Outcome = Literal["pending", "completed", "failed", "skipped", "stopped"]
"""How a request ended. ``skipped``: cancelled while waiting; ``stopped``: cancelled while
generating."""


Delivery = str | TokenLogprob | Completion
"""What a runner delivers for a request: text deltas, each generated token's TokenLogprob
just before its text (only when the request asked for logprobs), then one Completion."""


class RequestCancelled(Exception):
    """The request was cancelled before it finished (client gone, or the server stopping)."""


class Sink(Protocol):
    """Where a request's results go when an engine runs it in the background (the batch
    runner). Called from the engine's thread; must not block."""

    @property
    def cancelled(self) -> bool:
        """True once the consumer gave up: the request stops at the engine's next step."""
        ...

    def deliver(self, item: Delivery) -> None:
        """One text delta or TokenLogprob, or the final Completion."""
        ...

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """The end, whatever it was; ``error`` is passed on to the consumer when given."""
        ...


class Runner(Protocol):
    """Runs submitted requests on a thread of its own (``start``), reporting to their sinks:
    :class:`~prefixkv.engine.serial.SerialRunner` and
    :class:`~prefixkv.engine.batch.runner.BatchRunner`."""

    @property
    def num_waiting(self) -> int:
        """Requests submitted and not running yet."""
        ...

    @property
    def num_running(self) -> int: ...

    def submit(self, request: Request, sink: Sink) -> None:
        """Queue ``request``; results go to ``sink``. Raises RequestCancelled once the runner
        stopped accepting, InvalidRequestError for a request it could never hold."""
        ...

    def start(self, threads: int | None = None) -> None:
        """Start the thread; ``threads``: the cores its torch ops use."""
        ...

    def drain(self) -> None:
        """Stop accepting; every waiting request is finished as skipped at once."""
        ...

    def cancel_running(self) -> None:
        """Running requests stop before their next token."""
        ...

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing waits or runs; False after ``timeout`` seconds."""
        ...

    def stop(self, timeout: float = 10.0) -> None:
        """Drain, cancel what runs, and join the thread (up to ``timeout`` seconds)."""
        ...


def wait_until(done: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """True once ``done()`` is; False after ``timeout`` seconds (a runner's ``wait_idle``:
    ``done`` reads state another thread changes, so it is polled, every ``poll`` seconds)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True
