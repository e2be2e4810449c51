"""Connection hardening under uvicorn: bounds on reading each request head and body, a
connection limit below the open-file limit, and accept errors logged at most once per interval.

uvicorn (0.54) has no header or body timeout: ``timeout_keep_alive`` is armed only after a
response and cancelled by any byte, so a connection that never sends anything, or trickles a
request head or body, is held forever. :func:`h11_protocol` returns uvicorn's h11 protocol
with two timers added: a request head must be complete within ``header_timeout`` of the
connection opening (first request) or of the first byte of a later request on a kept-alive
connection, and its body within ``body_timeout`` of the head; an idle kept-alive connection is
still closed by ``timeout_keep_alive``. A connection that misses either is closed (the app,
if it is reading the body, sees the client disconnect).

When the process runs out of file descriptors, asyncio logs every failed ``accept()`` with a
traceback. Before CPython's fix for gh-151615 (June 2026) its accept loop also goes on
calling ``accept()`` after the first EMFILE, up to ``backlog`` (2048) times per wake-up, each
scheduling one more retry: measured on 3.11, 220,000 failures in 10 s, 40% of a core, and
as many tracebacks when the stale retries run after shutdown. :class:`HardenedLoop` stops
each round at the first such error, and :class:`ResourceErrorLimiter` logs one line per
interval with a count instead of a traceback per failure. It overrides two private methods of
asyncio; :func:`loop_factory` checks their shape at run time and falls back to asyncio's own
loop on a Python where they changed.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import platform
import socket
import time
from asyncio import selector_events
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from prefixkv.server.throttle import Throttle

log = logging.getLogger("prefixkv.server")

# Errors of accept() that mean "out of descriptors or memory": asyncio logs them and retries.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class RequestTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head takes longer than
    ``header_timeout`` seconds, or whose body takes longer than ``body_timeout`` seconds
    after its head (both set on the subclass :func:`h11_protocol` makes)."""

    header_timeout = 10.0
    body_timeout = 30.0
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of a later request on a kept-alive connection
        super().data_received(data)
        state = self.conn.their_state
        if state is not h11.IDLE:
            self._disarm()  # the head is complete (or the connection failed)
            if state is h11.SEND_BODY:
                self._arm_body()
            else:
                self._disarm_body()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request may be complete already, or its head partly buffered.
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            self._disarm()
        elif self.conn.trailing_data[0]:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_body(self) -> None:
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("closing a connection: no complete request head in %g s", self.header_timeout)
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            log.debug("closing a connection: request body incomplete after %g s", self.body_timeout)
            self.transport.close()


def h11_protocol(header_timeout: float, body_timeout: float = 30.0) -> type[asyncio.Protocol]:
    """The protocol class to pass as uvicorn's ``http``, with these timeouts (seconds)."""
    for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    return type(
        "RequestTimeoutProtocol",
        (RequestTimeoutProtocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )


def default_max_connections() -> int | None:
    """A connection limit below the open-file limit, so that a flood of clients gets uvicorn's
    503 (and a closed connection) before ``accept()`` fails for want of descriptors. Keeps a
    tenth of the limit (at least 16) for the process's own files and the refused connections;
    None when the limit is unbounded."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(1, soft - max(16, soft // 10))


class ResourceErrorLimiter:
    """An asyncio exception handler that logs an out-of-resource OSError (EMFILE, ENFILE,
    ENOBUFS, ENOMEM: what a failing ``accept()`` reports) as one line without a traceback,
    then, while they go on, one line per ``interval`` seconds counting them; anything else
    goes to the handler that was there before (by default asyncio's, with its traceback)."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None
        self.counted = 0  # errors since the last line
        self._quiet = False  # True from a logged line until an interval passes with no error

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self.previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        if self._quiet:
            self.counted += 1
            return
        log.error(
            "%s: %s; new clients wait until descriptors are free (raise the open-file limit, "
            "`ulimit -n`); repeats are counted every %g s",
            context.get("message", "out of resources"),
            exc,
            self.interval,
        )
        self._quiet = True
        loop.call_later(self.interval, self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.counted:
            self._quiet = False  # the next error is logged in full
            return
        log.error(
            "%d more out-of-resource errors (accept() and others) in the last %g s",
            self.counted,
            self.interval,
        )
        self.counted = 0
        loop.call_later(self.interval, self._flush, loop)


class RepeatFilter(logging.Filter):
    """Lets through the first of each of ``messages`` (uvicorn's per-request warnings, such as
    "Exceeded concurrency limit.") and then at most one per ``interval`` seconds, which says
    how many were left out since."""

    def __init__(
        self,
        messages: set[str],
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.messages = messages
        self.throttle = Throttle(interval, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.messages or record.args:
            return True
        show, left_out, since = self.throttle(record.msg)
        if show and left_out:
            record.msg = f"{record.msg} ({left_out} more in the last {since:.0f} s)"
        return show


# uvicorn's warnings that any client can cause, one per request.
UVICORN_PER_REQUEST = {"Exceeded concurrency limit.", "Invalid HTTP request received."}


class _OneRound:
    """The listening socket for one round of asyncio's accept loop: after an out-of-resource
    error, further ``accept()`` calls report an empty queue, so that the round ends (asyncio
    has removed the reader and scheduled its retry)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failed:
            raise BlockingIOError(errno.EAGAIN, "stopped after an out-of-resource error")
        try:
            return self.sock.accept()
        except OSError as exc:
            self.failed = exc.errno in RESOURCE_ERRNOS
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class HardenedLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop with one accept failure per round and retry (CPython
    gh-151615), no stale retry after its server closed, and out-of-resource errors logged
    through a :class:`ResourceErrorLimiter`. Overrides two private methods (stable since
    Python 3.5) without copying them: one wraps the socket it is given, the other drops a
    call; where CPython has the fix the first changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.set_exception_handler(ResourceErrorLimiter())

    def _accept_connection(self, protocol_factory: Any, sock: Any, *args: Any, **kw: Any) -> None:
        raw = sock.sock if isinstance(sock, _OneRound) else sock
        super()._accept_connection(protocol_factory, _OneRound(raw), *args, **kw)  # type: ignore[misc]

    def _start_serving(self, protocol_factory: Any, sock: Any, *args: Any, **kw: Any) -> None:
        if sock.fileno() != -1:  # else a retry scheduled before the server closed its socket
            super()._start_serving(protocol_factory, sock, *args, **kw)  # type: ignore[misc]


def loop_factory(
    base: type = selector_events.BaseSelectorEventLoop,
) -> type[asyncio.AbstractEventLoop]:
    """The event loop class to pass as uvicorn's ``loop``: :class:`HardenedLoop` where
    ``base`` (asyncio's selector loop) has the private methods it overrides in the shape it
    assumes (:func:`accept_loop_known`); elsewhere asyncio's own selector loop, after a warning
    that failed ``accept()`` calls are then neither cut short nor counted."""
    if accept_loop_known(base):
        return HardenedLoop
    log.warning(
        "asyncio's private accept loop differs from the one prefixkv hardens (Python %s): "
        "serving on asyncio's own loop, without the accept-error limits",
        platform.python_version(),
    )
    return asyncio.SelectorEventLoop


def accept_loop_known(base: type) -> bool:
    """Whether ``base`` has ``_accept_connection`` and ``_start_serving`` taking
    ``(self, protocol_factory, sock, ...)``: the private interface :class:`HardenedLoop`
    overrides, unchanged in CPython 3.10 through 3.13 (read in their sources; tested on
    3.11). What they do with ``sock`` is checked by the tests, not here."""
    for name in ("_accept_connection", "_start_serving"):
        method = getattr(base, name, None)
        if not callable(method):
            return False
        try:
            parameters = list(inspect.signature(method).parameters)
        except (TypeError, ValueError):  # no signature to read
            return False
        if parameters[:3] != ["self", "protocol_factory", "sock"]:
            return False
    return True
