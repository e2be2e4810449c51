"""Running an app under uvicorn until SIGINT or SIGTERM, then shutting down gracefully.

On either signal ``on_stop`` runs at once (the app drains its queue: queued requests get
their 503 then, nothing new starts), and uvicorn stops accepting connections and lets
in-flight requests finish for up to ``grace_seconds``, then runs the app's shutdown. It then
re-raises the signal it caught so that the process dies of it; we install no-op Python
handlers first, so that re-raise lands on them and a graceful stop exits with status 0.

Connections are hardened (see :mod:`prefixkv.server.connections`): a request head must
arrive within ``header_timeout`` seconds and its body within ``body_timeout`` after it, at
most ``max_connections`` are served at once (more get uvicorn's 503), and running out of
descriptors, like uvicorn's warnings that a client can cause once per request, is logged at
most once per interval.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from prefixkv.server.connections import (
    UVICORN_PER_REQUEST,
    RepeatFilter,
    default_max_connections,
    h11_protocol,
    loop_factory,
)

log = logging.getLogger("prefixkv.server")


def serve(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    grace_seconds: int = 10,
    access_log: bool = False,
    header_timeout: float = 10.0,
    body_timeout: float = 30.0,
    max_connections: int | None = None,
    on_stop: Callable[[float], None] = lambda grace: None,
) -> int:
    """Serve until a signal; returns the process exit status (0 after a graceful stop).

    ``header_timeout``: seconds a connection has to send a complete request head (from
    opening it, or from the first byte of a later request); ``body_timeout``: seconds it then
    has to send the body; ``max_connections``: more connections than this get a 503 to their
    requests (default: a tenth below the open-file limit, so that a flood is refused before
    ``accept()`` runs out of descriptors);
    ``on_stop(grace_seconds)``: run on a thread of its own at the first SIGINT/SIGTERM."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=h11_protocol(header_timeout, body_timeout),
        loop=loop_factory(),  # type: ignore[arg-type]  # uvicorn takes a loop factory
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=grace_seconds,
        limit_concurrency=max_connections or default_max_connections(),
        lifespan="on",
    )
    server = _Server(config, lambda: on_stop(grace_seconds))
    repeats = RepeatFilter(UVICORN_PER_REQUEST)
    logging.getLogger("uvicorn.error").addFilter(repeats)
    previous = {sig: signal.signal(sig, _after_shutdown) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logging.getLogger("uvicorn.error").removeFilter(repeats)
    return 0 if server.started else 1


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop: Callable[[], None] | None = on_stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        on_stop, self._on_stop = self._on_stop, None
        if on_stop is not None:
            # Not here: a signal handler may interrupt the very code holding the locks that
            # on_stop takes.
            threading.Thread(target=on_stop, name="prefixkv-stop", daemon=True).start()
        super().handle_exit(sig, frame)


def _after_shutdown(signum: int, frame: FrameType | None) -> None:
    # Reached only when uvicorn re-raises the signal it already handled gracefully.
    log.info("stopped on %s", signal.Signals(signum).name)
