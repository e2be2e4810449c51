"""Connection hardening under uvicorn: a bound on reading each request head, and a
connection limit below the open-file limit.

uvicorn (0.54) has no header timeout: ``timeout_keep_alive`` is armed only after a response
and cancelled by any byte, so a connection that never sends anything, or trickles a request
head, is held forever. :func:`h11_protocol` returns uvicorn's h11 protocol with one timer
added: a request head must be complete within ``header_timeout`` of the connection opening
(first request) or of the first byte of a later request on a kept-alive connection; an idle
kept-alive connection is still closed by ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("prefixkv.server")


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head takes longer than
    ``header_timeout`` seconds (set on the subclass :func:`h11_protocol` makes)."""

    header_timeout = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of a later request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # the head is complete (or the connection failed)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request may be complete already, or its head partly buffered.
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            self._disarm()
        elif self.conn.trailing_data[0]:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("closing a connection: no complete request head in %g s", self.header_timeout)
            self.transport.close()


def h11_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """The protocol class to pass as uvicorn's ``http``, with this header timeout."""
    if not header_timeout > 0:
        raise ValueError(f"header_timeout must be > 0, got {header_timeout}")
    return type(
        "HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout}
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
