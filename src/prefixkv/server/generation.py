"""One generation request end to end: body -> Request -> queue -> JSON or SSE.

Everything that can be wrong with a request is found before it is queued (so errors are
proper 4xx responses, not events in a stream that already said 200) and before the cache is
touched. Tokenizing (and rendering the chat template) can take seconds for a long prompt, so
it runs on a preparation thread, never on the event loop, and counts against the queue bound
from the moment the request is admitted. Then the prompt's blocks held below RAM (disk,
Redis) are promoted into RAM on a promotion thread of their own (a slow tier never delays
another request's tokenizing), before the request is queued. After that, the request's fate
is tied to its client: if the client disconnects, the job is cancelled, which the worker
notices between tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response

from prefixkv.cache.tenants import Namespace
from prefixkv.engine.logprob_records import PromptTokenLogprob, TokenLogprob
from prefixkv.engine.request import Completion, Request
from prefixkv.engine.role import EngineRole, RequestCancelled
from prefixkv.engine.samples import samples_of
from prefixkv.server import best_of, fanin, prompt_scores, responses, tool_replies
from prefixkv.server.body import read_json_object
from prefixkv.server.errors import APIError, error_body
from prefixkv.server.parse import ParsedRequest, parse_chat, parse_completion
from prefixkv.server.responses import ResponseMeta, Shape
from prefixkv.server.scheduler import Job, QueueFullError, Scheduler, Slot
from prefixkv.server.settings import ServerSettings
from prefixkv.server.tool_calls import CallScanner
from prefixkv.server.tools import ToolSpec
from prefixkv.threads import current_threads, helper_thread

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PROMOTE_THREADS = 4
"""Promotions at once: tier reads wait on I/O (and release the GIL), so a few stuck on a
slow tier leave threads for the others."""
log = logging.getLogger("prefixkv.server")
T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI generation API: how its body is read and how its answers are shaped."""

    name: str
    parse: Callable[[Mapping[str, Any], ServerSettings], ParsedRequest]
    shape: Shape


CHAT = Endpoint("chat", parse_chat, responses.CHAT)
TEXT = Endpoint("completions", parse_completion, responses.TEXT)


class Generation:
    """Serves generation endpoints over one engine and one scheduler."""

    def __init__(self, engine: EngineRole, scheduler: Scheduler, settings: ServerSettings) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.settings = settings
        # One thread: tokenizing shares the CPU with the model anyway, and one at a time
        # keeps a burst of huge prompts from taking every core.
        current_threads()  # this thread keeps its count when the helper claims one
        self._prepare = ThreadPoolExecutor(
            1, thread_name_prefix="prefixkv-prepare", initializer=helper_thread
        )
        self._promote = ThreadPoolExecutor(
            PROMOTE_THREADS, thread_name_prefix="prefixkv-promote", initializer=helper_thread
        )
        # One thread: a prompt's logprobs are a prefill; two at once would only queue on
        # the model lock.
        self._score = ThreadPoolExecutor(
            1, thread_name_prefix="prefixkv-score", initializer=helper_thread
        )

    def close(self) -> None:
        self._prepare.shutdown(wait=False, cancel_futures=True)
        self._promote.shutdown(wait=False, cancel_futures=True)
        self._score.shutdown(wait=False, cancel_futures=True)

    async def handle(self, http: HTTPRequest, tenant: str, endpoint: Endpoint) -> Response:
        arrived = time.perf_counter()
        body = await read_json_object(http, self.settings.max_body_bytes)
        parsed = endpoint.parse(body, self.settings)
        request, jobs = await self._queued(parsed, tenant, endpoint, arrived)
        meta = responses.new_meta(endpoint.shape, self.settings.model)
        asked = parsed.params.logprobs is not None
        if parsed.stream:
            chunks = [
                _chunks(endpoint.shape, meta, asked, i, parsed.tools) for i in range(len(jobs))
            ]
            events = _sse(jobs, chunks, parsed.include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        scoring = self._scoring(request, parsed.prompt_logprobs)
        completions = await _complete(http, jobs)
        chosen = best_of.best(completions, parsed.n)
        answer = responses.body(endpoint.shape, meta, chosen, asked, spent=completions)
        answer = tool_replies.with_calls(answer, parsed.tools)
        if scoring is not None:
            answer = prompt_scores.attached(endpoint.name, answer, await scoring)
        return JSONResponse(answer)

    def _scoring(
        self, request: Request, top: int | None
    ) -> asyncio.Future[tuple[PromptTokenLogprob, ...]] | None:
        """The prompt's logprobs, computed on the scoring thread beside the generation
        (both take the model in turn); None when not asked for. Not stopped by a client
        that leaves: at most one prefill of the prompt, whose outcome nobody then reads
        (the callback marks its exception read, so asyncio does not log it)."""
        if top is None:
            return None
        loop = asyncio.get_running_loop()
        scores = loop.run_in_executor(self._score, self.engine.prompt_logprobs, request.ids, top)
        scores.add_done_callback(lambda done: done.cancelled() or done.exception())
        return scores

    async def prefill(
        self, http: HTTPRequest, parsed: ParsedRequest, tenant: str, endpoint: Endpoint
    ) -> tuple[Request, Completion]:
        """Run ``parsed`` (one sample; the caller sets its max_tokens) like any request,
        queue and limits included, and return the Request and its Completion: what
        ``/v1/cache/pin`` caches before it pins."""
        request, jobs = await self._queued(parsed, tenant, endpoint, time.perf_counter())
        return request, (await _complete(http, jobs))[0]

    async def _queued(
        self, parsed: ParsedRequest, tenant: str, endpoint: Endpoint, arrived: float
    ) -> tuple[Request, list[Job]]:
        """Admit, prepare and queue ``parsed``'s jobs (one per sample): 429 when the queue
        is full, 503 when the server is stopping."""
        try:
            with self.scheduler.reserve() as slot:
                request = await self._request(parsed, Namespace(tenant, parsed.cache_salt))
                samples = samples_of(request, parsed.best_of)
                jobs = [Job(r, endpoint.name, arrived) for r in samples]
                _submit(slot, jobs)
        except QueueFullError as exc:
            raise APIError(429, f"server busy: {exc}", code="queue_full") from exc
        except RequestCancelled as exc:
            raise APIError(503, str(exc), code="shutting_down") from exc
        return request, jobs

    async def prepared(self, work: Callable[[], T]) -> T:
        """``work()`` (tokenizing) run on the preparation thread; raises what it raises."""
        return await asyncio.get_running_loop().run_in_executor(self._prepare, work)

    async def _request(self, parsed: ParsedRequest, namespace: Namespace) -> Request:
        """Tokenize and validate on the preparation thread, then bring the prompt's blocks
        held below RAM (disk, Redis) into RAM on a promotion thread, and only then return
        (for the caller to queue the request): the batch runner's ``open`` then finds them
        in RAM and reads no block from a tier (it still asks each tier once for the block
        past them, a miss), instead of reading them itself on the thread that runs every
        request's model. A promotion is bounded by the cache (its deadline, RAM's room).
        Raises the engine's InvalidRequestError (a 400)."""
        loop = asyncio.get_running_loop()
        request = await loop.run_in_executor(
            self._prepare, lambda: self._prepared(parsed, namespace)
        )
        await loop.run_in_executor(self._promote, lambda: self._promoted(request))
        return request

    def _prepared(self, parsed: ParsedRequest, namespace: Namespace) -> Request:
        return self.engine.request(
            parsed.prompt,
            best_of.scored(parsed.params, parsed.best_of, parsed.n),
            namespace=namespace,
            default_max_tokens=self.settings.default_max_tokens,
        )

    def _promoted(self, request: Request) -> None:
        """Promote the request's blocks; a failure costs the hits, never the request."""
        try:
            self.engine.cache.promote(request.ids, request.namespace)
        except Exception:
            log.exception("promoting a prompt's blocks from the lower tiers failed")


def _submit(slot: Slot, jobs: list[Job]) -> None:
    """Queue every job through ``slot``; if one is refused, the others are cancelled (and
    the refusal raised)."""
    try:
        for job in jobs:
            slot.submit(job)
    except BaseException:
        for job in jobs:
            job.cancel()
        raise


async def _complete(http: HTTPRequest, jobs: list[Job]) -> list[Completion]:
    """Wait for every job's completion, cancelling them all if the client disconnects
    first (or one of them fails)."""
    watcher = asyncio.create_task(_cancel_on_disconnect(http, jobs))
    try:
        return await fanin.results(jobs)
    except RequestCancelled as exc:
        raise APIError(503, str(exc), code="cancelled") from exc
    finally:
        for job in jobs:  # a no-op once a job is done; stops it if this handler is cancelled
            job.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _cancel_on_disconnect(http: HTTPRequest, jobs: list[Job]) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await http.receive())["type"] != "http.disconnect":
        pass
    for job in jobs:
        job.cancel()


class _Chunks:
    """One choice's chunks in a stream: each text delta goes out with the TokenLogprobs of
    the tokens delivered since the last chunk (a token whose text is held back, for a stop
    string or an incomplete character, is reported with the text that follows it, or at the
    end); every choice carries ``index``."""

    def __init__(
        self, shape: Shape, meta: ResponseMeta, with_logprobs: bool, index: int = 0
    ) -> None:
        self.shape, self.meta, self.index = shape, meta, index
        self.pending: list[TokenLogprob] | None = [] if with_logprobs else None
        self.offset = 0  # characters of token text reported (completions' text_offset)

    def opening(self) -> bytes | None:
        opening = self.shape.opening()
        return None if opening is None else responses.sse(self._chunk([opening]))

    def hold(self, item: TokenLogprob) -> None:
        if self.pending is not None:
            self.pending.append(item)

    def text(self, text: str, finish_reason: str | None = None) -> bytes:
        offset = self.offset
        choice = self.shape.delta(text, finish_reason, self.take_logprobs(), offset)
        return responses.sse(self._chunk([choice]))

    def take_logprobs(self) -> list[TokenLogprob] | None:
        """The TokenLogprobs held since the last chunk (None when none were asked for);
        advances the text offset past them."""
        logprobs = self.pending
        if logprobs is not None:
            self.pending = []
        self.offset += sum(len(item.chosen.token) for item in logprobs or ())
        return logprobs

    def usage(self, completions: list[Completion]) -> bytes:
        """The usage chunk (no choices) of every choice's completion."""
        return responses.sse(
            responses.chunk(self.shape, self.meta, [], responses.usage(*completions))
        )

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        indexed = [{**choice, "index": self.index} for choice in choices]
        return responses.chunk(self.shape, self.meta, indexed)


class _ToolChunks(_Chunks):
    """A chat choice's stream whose text is parsed for tool calls (see
    :mod:`prefixkv.server.tool_replies`): a delta may become several chunks, or none while
    a call's block is still open; held TokenLogprobs go with the next chunk sent."""

    def __init__(
        self, shape: Shape, meta: ResponseMeta, with_logprobs: bool, index: int,
        tools: ToolSpec, scanner: CallScanner,
    ) -> None:  # fmt: skip
        super().__init__(shape, meta, with_logprobs, index)
        self.tools, self.scanner = tools, scanner

    def text(self, text: str, finish_reason: str | None = None) -> bytes:
        events = self.scanner.feed(text)
        if finish_reason is not None:
            events += self.scanner.finish()
        out = [self._choice(delta, None) for delta in tool_replies.deltas(events)]
        if finish_reason is not None:
            reason = tool_replies.finish_reason(self.tools, self.scanner, finish_reason)
            out.append(self._choice({}, reason))
        return b"".join(out)

    def _choice(self, delta: dict[str, Any], reason: str | None) -> bytes:
        choice = self.shape.delta("", reason, self.take_logprobs(), 0)
        return responses.sse(self._chunk([{**choice, "delta": delta}]))


def _chunks(
    shape: Shape, meta: ResponseMeta, asked: bool, index: int, tools: ToolSpec | None
) -> _Chunks:
    """Choice ``index``'s stream: parsed for tool calls when the request's tools ask so."""
    scanner = tool_replies.scanner_for(tools)
    if tools is None or scanner is None:
        return _Chunks(shape, meta, asked, index)
    return _ToolChunks(shape, meta, asked, index, tools, scanner)


async def _sse(jobs: list[Job], chunks: list[_Chunks], include_usage: bool) -> AsyncIterator[bytes]:
    """The event stream of a request's jobs (``chunks[i]`` shapes job ``i``'s choice). A
    choice's first chunk is sent with its first token, so a client's time to first chunk
    is the real time to first token; the usage chunk follows the last choice's end.
    Starlette cancels this generator when the client disconnects; ``finally`` then cancels
    every job."""
    started = [False] * len(jobs)
    done: list[Completion] = []
    try:
        async with contextlib.aclosing(fanin.merged(jobs)) as items:
            async for index, item in items:
                stream = chunks[index]
                if not started[index] and (opening := stream.opening()) is not None:
                    yield opening
                started[index] = True
                if isinstance(item, TokenLogprob):
                    stream.hold(item)
                elif isinstance(item, str):
                    if data := stream.text(item):  # empty while a tool call's block is open
                        yield data
                else:
                    yield stream.text("", item.finish_reason)
                    done.append(item)
        if include_usage:
            yield chunks[0].usage(done)
        yield responses.sse("[DONE]")
    except RequestCancelled as exc:
        yield responses.sse(error_body(503, str(exc), code="cancelled"))
        yield responses.sse("[DONE]")
    except Exception:
        yield responses.sse(error_body(500, "internal server error", code="internal_error"))
        yield responses.sse("[DONE]")
    finally:
        for job in jobs:
            job.cancel()
