"""One generation request end to end: body -> validated Job -> FIFO queue -> JSON or SSE.

Everything that can be wrong with a request is found before it is queued (so errors are
proper 4xx responses, not events in a stream that already said 200) and before the cache is
touched. After that, the request's fate is tied to its client: if the client disconnects,
the job is cancelled, which the worker notices between tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import Request
from starlette.responses import Response

from prefixkv.engine.engine import Completion, Engine
from prefixkv.engine.prompts import prompt_field, prompt_ids
from prefixkv.server import responses
from prefixkv.server.body import read_json_object
from prefixkv.server.errors import APIError, error_body
from prefixkv.server.protocol import GenerationRequest, parse_chat, parse_completion
from prefixkv.server.responses import ResponseMeta, Shape
from prefixkv.server.scheduler import Job, JobCancelled, QueueFullError, Scheduler
from prefixkv.server.settings import ServerSettings

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI generation API: how its body is read and how its answers are shaped."""

    name: str
    parse: Callable[[Mapping[str, Any], ServerSettings], GenerationRequest]
    shape: Shape


CHAT = Endpoint("chat", parse_chat, responses.CHAT)
TEXT = Endpoint("completions", parse_completion, responses.TEXT)


class Generation:
    """Serves generation endpoints over one engine and one scheduler."""

    def __init__(self, engine: Engine, scheduler: Scheduler, settings: ServerSettings) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.settings = settings

    async def handle(self, request: Request, tenant: str, endpoint: Endpoint) -> Response:
        body = await read_json_object(request, self.settings.max_body_bytes)
        spec = endpoint.parse(body, self.settings)
        job = self.job(spec, (tenant, spec.cache_salt), endpoint.name)
        try:
            self.scheduler.submit(job)
        except QueueFullError as exc:
            raise APIError(429, f"server busy: {exc}", code="queue_full") from exc
        except JobCancelled as exc:
            raise APIError(503, str(exc), code="shutting_down") from exc
        meta = responses.new_meta(endpoint.shape, self.settings.model)
        if spec.stream:
            events = _sse(job, endpoint.shape, meta, spec.include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        completion = await _complete(request, job)
        return JSONResponse(responses.body(endpoint.shape, meta, completion))

    def job(self, spec: GenerationRequest, namespace: tuple[str, str], endpoint: str) -> Job:
        """Tokenize and validate; raises the engine's InvalidRequestError (a 400)."""
        engine = self.engine
        ids = prompt_ids(spec.prompt, engine.tokenizer, engine.vocab_size)
        # An unspecified max_tokens means "up to the default, as far as the context allows".
        room = max(1, engine.context_length - len(ids))
        max_tokens = spec.max_tokens or min(self.settings.default_max_tokens, room)
        params = engine.validate(
            ids,
            prompt_field(spec.prompt),
            max_tokens=max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            seed=spec.seed,
            stop=spec.stop,
        )
        return Job(ids, params, namespace, endpoint)


async def _complete(request: Request, job: Job) -> Completion:
    """Wait for the whole completion, cancelling the job if the client disconnects first."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        return await job.result()
    except JobCancelled as exc:
        raise APIError(503, str(exc), code="cancelled") from exc
    finally:
        job.cancel()  # a no-op once the job is done; stops it if this handler is cancelled
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


async def _sse(
    job: Job, shape: Shape, meta: ResponseMeta, include_usage: bool
) -> AsyncIterator[bytes]:
    """The event stream of a job. The first chunk is sent with the first token, so a
    client's time to first chunk is the real time to first token. Starlette cancels this
    generator when the client disconnects; ``finally`` then cancels the job."""
    started = False
    try:
        async for item in job.events():
            if not started and (opening := shape.opening()) is not None:
                yield responses.sse(responses.chunk(shape, meta, [opening]))
            started = True
            if isinstance(item, str):
                yield responses.sse(responses.chunk(shape, meta, [shape.delta(item, None)]))
                continue
            final = shape.delta("", item.finish_reason)
            yield responses.sse(responses.chunk(shape, meta, [final]))
            if include_usage:
                yield responses.sse(responses.chunk(shape, meta, [], responses.usage(item)))
        yield responses.sse("[DONE]")
    except JobCancelled as exc:
        yield responses.sse(error_body(503, str(exc), code="cancelled"))
    except Exception:
        yield responses.sse(error_body(500, "internal server error", code="internal_error"))
    finally:
        job.cancel()
