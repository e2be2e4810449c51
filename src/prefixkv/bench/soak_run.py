"""``prefixkv bench soak``: one run against a started server and redis-server.

One event loop runs the clients (:mod:`.soak_traffic`), the sampler and the Redis restart.
The sampler takes a sample every ``interval`` seconds and prints it; every ``quiet_every``
seconds it makes a *quiet point* instead: it stops admitting requests, waits for those in
flight, then polls the server until nothing runs, waits, is pinned or reserved (or
``IDLE_TIMEOUT`` passes) and keeps that sample. At ``redis_stop_at`` seconds the redis-server
is stopped while traffic goes on, and ``redis_down`` seconds later a new one is started on the
same port (empty: it has no persistence). At the end the clients stop, and a last quiet sample
is taken.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from prefixkv.bench.soak_sample import FINAL, LOAD, QUIET, LogScan, Sample, take
from prefixkv.bench.soak_traffic import Client, Gate, Mix, Tally, run_client
from prefixkv.bench.soak_verdict import RedisEvents
from prefixkv.bench.tiers_servers import ADMIN_HEADERS, RedisServer

IDLE_TIMEOUT = 120.0  # seconds a quiet point waits for the server to go idle
DRAIN_TIMEOUT = 900.0  # seconds it waits for the requests in flight


@dataclass(frozen=True)
class Schedule:
    duration_s: float
    interval_s: float
    quiet_every_s: float
    redis_stop_at_s: float
    redis_down_s: float


@dataclass
class RedisState:
    """The current redis-server, replaced by the restart; ``start`` makes a new one on a port."""

    server: RedisServer
    start: Callable[[int], RedisServer]
    up: bool = True
    events: RedisEvents | str = "the run ended before the restart"  # or why it failed


@dataclass
class Run:
    """What a run collected; ``aborted`` says why sampling stopped early (None: it did not)."""

    samples: list[Sample] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    aborted: str | None = None


async def _redis_counters(http: httpx.AsyncClient) -> tuple[int, int]:
    """(errors, writes) of the server's Redis tier."""
    tiers = (await http.get("/v1/cache/stats")).raise_for_status().json()["tiers"]
    redis: dict[str, Any] = next(t for t in tiers if t["tier"] == "redis")
    return int(redis["errors"]), int(redis["writes"])


async def restart_redis(
    state: RedisState, http: httpx.AsyncClient, schedule: Schedule, clock: Callable[[], float]
) -> None:
    """Stop the redis-server at ``redis_stop_at_s``, start a new one on its port
    ``redis_down_s`` later; record the events in ``state.events`` (without keys_at_end), or
    what went wrong."""
    try:
        await _restart(state, http, schedule, clock)
    except (httpx.HTTPError, OSError, RuntimeError, StopIteration) as exc:
        state.events = f"the restart failed: {type(exc).__name__}: {exc}"
        print(f"# {state.events}", flush=True)


async def _restart(
    state: RedisState, http: httpx.AsyncClient, schedule: Schedule, clock: Callable[[], float]
) -> None:
    await asyncio.sleep(max(0.0, schedule.redis_stop_at_s - clock()))
    errors_before, _ = await _redis_counters(http)
    port = state.server.port
    await asyncio.to_thread(state.server.stop)
    state.up, stopped = False, clock()
    print(f"# t={stopped / 60:.2f} min: redis-server stopped; traffic goes on", flush=True)
    await asyncio.sleep(schedule.redis_down_s)
    state.server = await asyncio.to_thread(state.start, port)
    state.up, started = True, clock()
    print(f"# t={started / 60:.2f} min: redis-server started again on port {port}", flush=True)
    errors_after, writes_after = await _redis_counters(http)
    state.events = RedisEvents(stopped, started, errors_before, errors_after, writes_after, 0)


async def wait_idle(http: httpx.AsyncClient, sample: Callable[[str], Any], kind: str) -> Sample:
    """Samples of ``kind`` until the server is idle (nothing running, waiting, pinned or
    reserved) or ``IDLE_TIMEOUT`` passes; returns the last one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + IDLE_TIMEOUT
    while True:
        got: Sample = await sample(kind)
        busy = got.running + got.waiting + got.cache["pinned_blocks"] + got.cache["reserved_blocks"]
        if not busy or loop.time() >= deadline:
            return got
        await asyncio.sleep(0.2)


class Server(NamedTuple):
    url: str
    pid: int
    log: Path  # the file its output goes to


async def soak(
    server: Server,
    mix: Mix,
    schedule: Schedule,
    redis: RedisState,
    clients: int,
    seed: int,
    show: Callable[[Sample, Sample | None], None],
) -> Run:
    """Drive ``server`` for the scheduled time with ``clients`` clients, restarting Redis on
    the way (``redis`` is updated); ``show(sample, previous)`` prints each sample."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    def clock() -> float:
        return loop.time() - start

    run, gate, stop, scan = Run(), Gate(), asyncio.Event(), LogScan(server.log)
    # the server is a Replica: every request is its admin's (whole-cache stats, /metrics)
    async with httpx.AsyncClient(base_url=server.url, timeout=60.0, headers=ADMIN_HEADERS) as http:

        async def sample(kind: str) -> Sample:
            return await take(http, server.pid, scan, (clock(), kind, redis.up), run.tally.counts())

        tasks = [
            asyncio.create_task(run_client(server.url, Client(c, mix, random.Random(seed * 1000 + c)),
                                           run.tally, gate, stop))
            for c in range(clients)
        ]  # fmt: skip
        chaos = asyncio.create_task(restart_redis(redis, http, schedule, clock))
        try:
            await _sample_loop(run, gate, schedule, clock, sample, http, show)
        except (httpx.HTTPError, OSError) as exc:
            run.aborted = f"t={clock():.0f} s: {type(exc).__name__}: {exc}"
        await _stop(tasks, chaos, stop, gate)
        if run.aborted is None:
            try:
                run.samples.append(await wait_idle(http, sample, FINAL))
                show(run.samples[-1], run.samples[-2] if len(run.samples) > 1 else None)
            except (httpx.HTTPError, OSError) as exc:
                run.aborted = f"final sample: {type(exc).__name__}: {exc}"
    return run


async def _stop(
    clients: list[asyncio.Task[None]], chaos: asyncio.Task[None], stop: asyncio.Event, gate: Gate
) -> None:
    """Let the clients finish their requests (``DRAIN_TIMEOUT`` at most, then cancel them);
    cancel the Redis restart if it is still pending."""
    stop.set()
    gate.open()
    chaos.cancel()
    await asyncio.wait(clients, timeout=DRAIN_TIMEOUT)
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, chaos, return_exceptions=True)


async def _sample_loop(
    run: Run,
    gate: Gate,
    schedule: Schedule,
    clock: Callable[[], float],
    sample: Callable[[str], Any],
    http: httpx.AsyncClient,
    show: Callable[[Sample, Sample | None], None],
) -> None:
    """A sample at every multiple of the interval (a quiet one every ``quiet_every_s``) until
    the duration; multiples that passed during a long quiet point are skipped, not caught up."""
    due, next_quiet = schedule.interval_s, schedule.quiet_every_s
    while due <= schedule.duration_s:
        await asyncio.sleep(max(0.0, due - clock()))
        if clock() >= next_quiet:
            next_quiet += schedule.quiet_every_s
            gate.close()
            try:
                await gate.drained(DRAIN_TIMEOUT)
                got = await wait_idle(http, sample, QUIET)
            finally:
                gate.open()
        else:
            got = await sample(LOAD)
        run.samples.append(got)
        show(got, run.samples[-2] if len(run.samples) > 1 else None)
        while due <= clock():
            due += schedule.interval_s
