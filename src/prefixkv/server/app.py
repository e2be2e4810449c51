"""The FastAPI application: routes, authentication, lifecycle of the worker.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /tokenize``,
``POST /detokenize`` (vLLM's), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /v1/cache/stats``, ``POST /v1/cache/reset``,
``POST /v1/cache/explain`` (:mod:`prefixkv.server.explaining`), ``POST /v1/cache/pin``,
``POST /v1/cache/unpin``, ``GET /metrics``, ``GET /v1/dashboard`` and ``GET /health`` (the
only one open without an API key, with the dashboard's page and files, which hold no
figures; ``/metrics`` too on a keyless server bound to loopback, see
:mod:`prefixkv.server.auth`). The interactive docs are off:
they would be unauthenticated endpoints.

The routes are module-level and find their server through ``request.app.state``, so several
apps (over different engines) can live in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.responses import Response

from prefixkv.engine.batch.canary import NO_CANARY, Canary
from prefixkv.engine.role import EngineRole, Runner
from prefixkv.server import dashboard, explaining, pinning, tokenizing
from prefixkv.server.auth import Authenticator, Caller, require_admin
from prefixkv.server.backends import RunnerBackend
from prefixkv.server.body import read_json_object
from prefixkv.server.errors import APIError, install_error_handlers
from prefixkv.server.generation import CHAT, TEXT, Generation
from prefixkv.server.history import History, Sources
from prefixkv.server.hosts import HostCheck
from prefixkv.server.metrics import CONTENT_TYPE, RequestCounter, ServerMetrics, tier_records
from prefixkv.server.request_log import RequestLog
from prefixkv.server.scheduler import Job, Scheduler
from prefixkv.server.settings import ServerSettings
from prefixkv.server.steps import StepMetrics

log = logging.getLogger("prefixkv.server")

RESET_BODY_BYTES = 4096


@dataclass
class ServerState:
    """Everything one app serves with."""

    engine: EngineRole
    settings: ServerSettings
    scheduler: Scheduler
    metrics: ServerMetrics
    generation: Generation
    auth: Authenticator
    history: History
    request_log: RequestLog | None = None
    """Told of every finished generation after the metrics (``--request-log``)."""
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(
        cls,
        engine: EngineRole,
        settings: ServerSettings,
        runner: Runner,
        steps: StepMetrics,
        threads: int | None,
        request_log: RequestLog | None = None,
        canary: Canary = NO_CANARY,
    ) -> ServerState:
        scheduler = Scheduler(RunnerBackend(runner, threads), settings.max_queue)
        auth = Authenticator(settings.api_keys, settings.admin_keys)
        metrics = ServerMetrics(
            engine.cache,
            steps,
            lambda: scheduler.pending,
            lambda: scheduler.backend.running,
            list(auth.tenants),
            canary.counts,
        )
        scheduler.on_finish = metrics.observe_job
        if request_log is not None:
            scheduler.on_finish = _both(metrics.observe_job, request_log.observe)
            metrics.watch_request_log(lambda: request_log.dropped + request_log.failed)
        generation = Generation(engine, scheduler, settings)
        sources = Sources(
            engine.cache,
            steps,
            metrics.recent_ttft,
            running=lambda: scheduler.backend.running,
            waiting=lambda: scheduler.pending,
            tenants=auth.tenants,
            canary=canary.counts,
        )
        history = History(sources)
        return cls(engine, settings, scheduler, metrics, generation, auth, history, request_log)

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.settings.model,
            "object": "model",
            "created": self.created,
            "owned_by": "prefixkv",
            "max_model_len": self.engine.context_length,
        }


def _both(first: Callable[[Job], None], second: Callable[[Job], None]) -> Callable[[Job], None]:
    def both(job: Job) -> None:
        first(job)
        second(job)

    return both


def create_app(
    engine: EngineRole,
    settings: ServerSettings,
    runner: Runner,
    steps: StepMetrics,
    threads: int | None = None,
    request_log: RequestLog | None = None,
    canary: Canary = NO_CANARY,
) -> FastAPI:
    """An OpenAI-compatible app serving ``engine``'s requests on ``runner`` (serial or batch,
    built with ``steps.observe`` as its step callback: ``/metrics`` exports ``steps``),
    whose thread runs torch ops on ``threads`` cores (default: the starting thread's). The
    runner's thread starts and stops with the app's lifespan (uvicorn runs it; so does
    ``TestClient`` used as a context manager). ``request_log`` gets a line per finished
    generation and is closed with the app; ``canary`` is the runner's exactness canary, whose
    counts ``/metrics`` and the dashboard show."""
    state = ServerState.build(engine, settings, runner, steps, threads, request_log, canary)
    app = FastAPI(
        title="prefixkv", lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.prefixkv = state
    install_error_handlers(app)
    app.add_middleware(RequestCounter, metrics=state.metrics)
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)  # outermost: runs first
    app.include_router(router)
    return app


def begin_shutdown(app: FastAPI, grace_seconds: float) -> None:
    """What a stop signal starts (call it off the event loop): nothing new is admitted, every
    queued request gets its 503 at once; the running one may finish, but is cancelled a
    second before the grace period ends, so that its client still gets an OpenAI-shaped
    answer (a 503, or an error event and ``[DONE]``) rather than a cut connection."""
    state: ServerState = app.state.prefixkv
    state.scheduler.drain()
    if state.scheduler.wait_idle(max(0.0, grace_seconds - 1.0)):
        return
    log.warning("cancelling the running request: the shutdown grace period is ending")
    state.scheduler.cancel_running()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.prefixkv
    state.scheduler.start()
    sampler = asyncio.create_task(state.history.run(state.settings.sample_seconds))
    log.info("serving %s (cache: %s)", state.settings.model, type(state.engine.cache).__name__)
    yield
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    state.scheduler.stop()
    state.generation.close()
    if state.request_log is not None:
        state.request_log.close()


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.prefixkv
    return state


def _caller(request: Request) -> Caller:
    return _state(request).auth(request)


CallerDep = Annotated[Caller, Depends(_caller)]
"""Who is calling; resolving it authenticates the request (401 otherwise)."""

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, caller: CallerDep) -> Response:
    return await _state(request).generation.handle(request, caller.tenant, CHAT)


@router.post("/v1/completions")
async def completions(request: Request, caller: CallerDep) -> Response:
    return await _state(request).generation.handle(request, caller.tenant, TEXT)


@router.post("/tokenize")
async def tokenize(request: Request, caller: CallerDep) -> dict[str, Any]:
    state = _state(request)
    return await tokenizing.tokenize(request, state.engine, state.generation, state.settings)


@router.post("/detokenize")
async def detokenize(request: Request, caller: CallerDep) -> dict[str, Any]:
    state = _state(request)
    return await tokenizing.detokenize(request, state.engine, state.generation, state.settings)


@router.get("/v1/models")
async def models(request: Request, caller: CallerDep) -> dict[str, Any]:
    return {"object": "list", "data": [_state(request).model_card()]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request, caller: CallerDep) -> dict[str, Any]:
    state = _state(request)
    if model_id not in state.settings.model_names:
        raise APIError(404, f"the model {model_id!r} does not exist", code="model_not_found")
    return state.model_card()


@router.get("/v1/cache/stats")
async def cache_stats(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The admin sees the whole cache; a tenant sees its own namespaces only (and not the
    pool's free blocks, which would tell it how much the others hold)."""
    state = _state(request)
    cache = state.engine.cache
    if caller.admin:
        stats = cache.stats()
        return {
            **stats._asdict(),
            "hit_rate": stats.hit_rate,
            "miss_tokens": cache.miss_tokens(),
            "scope": "all",
            "tiers": tier_records(cache),
        }
    stats = cache.tenant_stats(caller.tenant)
    own = {k: v for k, v in stats._asdict().items() if k not in _POOL_WIDE}
    return {
        **own,
        "hit_rate": stats.hit_rate,
        "miss_tokens": cache.tenant_miss_tokens(caller.tenant),
        "time_to_first_token": state.metrics.tenants.ttft_summary(caller.tenant),
        "scope": "tenant",
    }


_POOL_WIDE = frozenset({"free_blocks", "reserved_blocks"})


@router.post("/v1/cache/reset")
async def cache_reset(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Body ``{}`` or ``{"scope": "tenant"}``: the caller's own namespaces; ``{"scope":
    "all"}``: the whole cache (admin only). A JSON body is required: a cross-site page can
    send a "simple" POST (text/plain, form data) without asking, but not application/json."""
    body = await read_json_object(request, RESET_BODY_BYTES)
    scope = body.get("scope", "tenant")
    cache = _state(request).engine.cache
    if scope == "tenant":
        return {"evicted_blocks": cache.reset_tenant(caller.tenant), "scope": scope}
    if scope != "all":
        raise APIError.invalid('scope must be "tenant" or "all"', "scope")
    require_admin(caller, "a reset of the whole cache")
    return {"evicted_blocks": cache.reset(), "scope": scope}


@router.post("/v1/cache/explain")
async def cache_explain(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Why this chat or completions body would (not) hit the cache now; runs nothing."""
    state = _state(request)
    return await explaining.explain(request, caller, state.engine, state.generation, state.settings)


@router.post("/v1/cache/pin")
async def cache_pin(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Cache a prompt and keep its blocks resident for ``ttl_seconds`` (see
    :mod:`prefixkv.server.pinning`)."""
    return await pinning.pin(request, _state(request).generation, caller.tenant)


@router.post("/v1/cache/unpin")
async def cache_unpin(request: Request, caller: CallerDep) -> dict[str, Any]:
    return await pinning.unpin(request, _state(request).generation, caller.tenant)


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    """Admin only, unless the settings make it public (a keyless server on loopback)."""
    state = _state(request)
    if not state.settings.public_metrics:
        require_admin(state.auth(request), "/metrics (whole-cache and all-tenant figures)")
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/dashboard")
async def dashboard_page() -> Response:
    return dashboard.asset("index.html")


@router.get("/dashboard/{name}")
async def dashboard_file(name: str) -> Response:
    return dashboard.asset(name)


@router.get("/v1/dashboard")
async def dashboard_data(request: Request, caller: CallerDep, since: float = 0.0) -> dict[str, Any]:
    """The dashboard's points after Unix time ``since``: the whole server for the admin (or
    anyone where ``/metrics`` is public), the caller's own cache figures otherwise."""
    state = _state(request)
    interval = state.settings.sample_seconds
    if caller.admin or state.settings.public_metrics:
        return dashboard.whole_view(state.history, state.engine.cache, interval, since)
    return dashboard.tenant_view(state.history, state.engine.cache, interval, caller.tenant, since)
