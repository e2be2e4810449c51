"""Connections cannot starve the server: a request head must arrive within the header timeout
(silent and slowloris connections are closed), kept-alive connections still work, more
connections than the limit get a fast 503, and running out of descriptors is logged once per
interval instead of once per failed accept().

The fast tests run uvicorn in a thread with a tiny ASGI app; the slow ones start ``prefixkv
serve`` on the tiny model with 256 file descriptors and open 300 connections to it."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import select
import socket
import threading
import time
from asyncio import selector_events
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from prefixkv.cli import commands as cli
from prefixkv.server import connections
from prefixkv.server.connections import HardenedLoop, ResourceErrorLimiter, h11_protocol

from .conftest import TINY_ARGS
from .harness import ServerProcess, free_port, wait_for

REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def closed_by_server(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closes ``sock`` (reading and dropping what it sends), or None
    if it is still open after ``timeout``."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def trickle(sock: socket.socket, data: bytes, interval: float, timeout: float) -> tuple[int, float]:
    """Send ``data`` (part of a request head or body) one byte per ``interval`` until the server
    closes the connection; the bytes sent and the seconds it took. Fails if the server still
    listens after ``timeout``."""
    start = time.monotonic()
    for sent, byte in enumerate(data):
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return sent, time.monotonic() - start
        readable, _, _ = select.select([sock], [], [], interval)
        if readable and not sock.recv(65536):
            return sent + 1, time.monotonic() - start
        assert time.monotonic() - start < timeout, "the server kept a trickled request open"
    raise AssertionError("all the data was sent: make it longer")


def exchange(sock: socket.socket, request: bytes = REQUEST) -> bytes:
    """Send one request on ``sock`` and read its whole response (a Content-Length body)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


# Fast: the protocol under uvicorn in this process.


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def _body_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, then answers with its length (nothing if the client left)."""
    assert scope["type"] == "http"
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def post_head(length: int) -> bytes:
    return (
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: " + str(length).encode() + b"\r\n\r\n"
    )


@contextmanager
def uvicorn_thread(
    header_timeout: float,
    keep_alive: float = 5.0,
    body_timeout: float = 30.0,
    app: Callable[..., Any] = _ok,
) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=h11_protocol(header_timeout, body_timeout),
        loop=HardenedLoop,
        timeout_keep_alive=keep_alive,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, timeout=10)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_silent_connection_is_closed_after_the_header_timeout() -> None:
    with (
        uvicorn_thread(header_timeout=0.5) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        elapsed = closed_by_server(sock, timeout=5)
        assert elapsed is not None and 0.4 < elapsed < 2.0


def test_a_trickled_head_is_bounded_as_a_whole() -> None:
    with (
        uvicorn_thread(header_timeout=0.5) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sent, elapsed = trickle(sock, REQUEST[:-2], interval=0.1, timeout=5)
        assert sent >= 3 and 0.4 < elapsed < 2.0


def test_a_trickled_body_is_bounded_as_a_whole() -> None:
    with (
        uvicorn_thread(header_timeout=5, body_timeout=0.5, app=_body_length) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(post_head(100))
        sent, elapsed = trickle(sock, b"x" * 100, interval=0.1, timeout=5)
        assert sent >= 3 and 0.4 < elapsed < 2.0


def test_a_body_sent_in_time_is_answered_and_the_connection_kept() -> None:
    with (
        uvicorn_thread(header_timeout=5, body_timeout=0.6, app=_body_length) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(post_head(30))
        for _ in range(3):  # in pieces, well within the timeout
            time.sleep(0.1)
            sock.sendall(b"x" * 10)
        assert exchange(sock, b"").startswith(b"HTTP/1.1 200")
        time.sleep(1.0)  # past the body timeout: it was disarmed with the body complete
        assert exchange(sock, post_head(4) + b"abcd").startswith(b"HTTP/1.1 200")


def test_a_body_never_sent_after_an_early_response_closes_the_connection() -> None:
    # The app answers without reading the body (as a 401 or 413 would); the client then sends
    # nothing more: the connection is closed once the body is late, not held.
    with (
        uvicorn_thread(header_timeout=5, body_timeout=0.5) as port,
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        assert exchange(sock, post_head(10)).startswith(b"HTTP/1.1 200")
        elapsed = closed_by_server(sock, timeout=5)
        assert elapsed is not None and elapsed < 2.0


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="body_timeout must be > 0"):
        h11_protocol(10, 0)
    with pytest.raises(ValueError, match="header_timeout must be > 0"):
        h11_protocol(-1)


@pytest.mark.slow  # waits out uvicorn's 5 s keep-alive timeout
@pytest.mark.serial  # closed within 1.5-3 s
def test_kept_alive_connections_wait_for_the_keep_alive_timeout() -> None:
    with uvicorn_thread(header_timeout=0.5, keep_alive=2.0) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            assert exchange(sock).startswith(b"HTTP/1.1 200")
            time.sleep(0.8)  # idle longer than the header timeout: the connection stays
            assert exchange(sock).startswith(b"HTTP/1.1 200")
            elapsed = closed_by_server(sock, timeout=5)  # idle: closed by the keep-alive timeout
            assert elapsed is not None and 1.5 < elapsed < 3.0
        with socket.create_connection(("127.0.0.1", port)) as sock:
            assert exchange(sock).startswith(b"HTTP/1.1 200")
            time.sleep(0.8)
            # The next head is bounded from its first byte, not from the last response.
            sent, elapsed = trickle(sock, REQUEST[:-2], interval=0.1, timeout=5)
            assert sent >= 3 and 0.4 < elapsed < 2.0
        with socket.create_connection(("127.0.0.1", port)) as sock:
            # A pipelined request whose head never ends: bounded from the previous response.
            assert exchange(sock, REQUEST + b"GET / HTTP/1.1\r\n").startswith(b"HTTP/1.1 200")
            elapsed = closed_by_server(sock, timeout=5)
            assert elapsed is not None and elapsed < 2.0


def test_accept_stops_at_the_first_out_of_resource_error(caplog: pytest.LogCaptureFixture) -> None:
    class Exhausted:
        accepts = 0

        def __init__(self) -> None:
            self.sock = socket.socket()

        def accept(self) -> Any:
            self.accepts += 1
            raise OSError(errno.EMFILE, "Too many open files")

        def fileno(self) -> int:
            return self.sock.fileno()

    loop = HardenedLoop()
    sock = Exhausted()
    try:
        with caplog.at_level(logging.ERROR):
            loop._accept_connection(lambda: None, sock, None, None, 2048)
        # asyncio before gh-151615 calls accept() 2048 times here, scheduling 2048 retries;
        # here: one accept(), one retry (and the log limiter's timer).
        assert sock.accepts == 1 and len(loop._scheduled) == 2
        assert [r.getMessage()[:38] for r in caplog.records] == [
            "socket.accept() out of system resource"
        ]
        sock.sock.close()
        loop._start_serving(lambda: None, sock)  # a retry due after the server closed: dropped
    finally:
        loop.close()
        sock.sock.close()


def test_this_pythons_accept_loop_is_the_one_hardened() -> None:
    assert connections.accept_loop_known(selector_events.BaseSelectorEventLoop)
    assert connections.loop_factory() is HardenedLoop


def test_a_changed_accept_loop_falls_back_to_asyncios_own(caplog: pytest.LogCaptureFixture) -> None:
    class Reordered:
        def _accept_connection(self, sock: Any, protocol_factory: Any) -> None: ...
        def _start_serving(self, protocol_factory: Any, sock: Any) -> None: ...

    class Renamed:
        def _accept_connection(self, protocol_factory: Any, sock: Any) -> None: ...
        def _start_server(self, protocol_factory: Any, sock: Any) -> None: ...

    assert not connections.accept_loop_known(Reordered)
    assert not connections.accept_loop_known(Renamed)
    with caplog.at_level(logging.WARNING):
        assert connections.loop_factory(Renamed) is asyncio.SelectorEventLoop
    assert "without the accept-error limits" in caplog.text


def test_resource_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        limiter = ResourceErrorLimiter(interval=0.2)
        limiter.install(loop)
        context = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(errno.EMFILE, "x"),
        }
        for _ in range(1000):
            loop.call_exception_handler(context)
        await asyncio.sleep(0.3)  # one count line
        await asyncio.sleep(0.2)  # a quiet interval: the next error is logged in full again
        loop.call_exception_handler(context)
        loop.call_exception_handler({"message": "something else", "exception": ValueError("boom")})

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    lines = [(r.name, r.getMessage().split(";")[0]) for r in caplog.records]
    assert lines == [
        ("prefixkv.server", "socket.accept() out of system resource: [Errno 24] x"),
        (
            "prefixkv.server",
            "999 more out-of-resource errors (accept() and others) in the last 0.2 s",
        ),
        ("prefixkv.server", "socket.accept() out of system resource: [Errno 24] x"),
        ("asyncio", "something else"),  # anything else keeps asyncio's handler and traceback
    ]


def test_per_request_warnings_are_shown_once_per_interval() -> None:
    now = [0.0]
    repeats = connections.RepeatFilter(
        {"Exceeded concurrency limit."}, interval=10, clock=lambda: now[0]
    )

    def shown(msg: str, args: tuple[Any, ...] = ()) -> str | None:
        record = logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, msg, args, None)
        return record.getMessage() if repeats.filter(record) else None

    assert shown("Exceeded concurrency limit.") == "Exceeded concurrency limit."
    assert [shown("Exceeded concurrency limit.") for _ in range(5)] == [None] * 5
    assert shown("Something else.") == "Something else."
    now[0] = 12.0
    assert (
        shown("Exceeded concurrency limit.")
        == "Exceeded concurrency limit. (5 more in the last 12 s)"
    )
    assert shown("Exceeded concurrency limit.") is None


def test_default_connection_limit_leaves_a_tenth_of_the_descriptors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for limit, expected in [(256, 231), (1024, 922), (100, 84), (resource.RLIM_INFINITY, None)]:
        monkeypatch.setattr(resource, "getrlimit", lambda _, limit=limit: (limit, limit))
        assert connections.default_max_connections() == expected


def test_timeout_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli.build_parser().parse_args(["serve"])
    assert (args.header_timeout, args.body_timeout, args.max_connections) == (10.0, 30.0, None)
    monkeypatch.setenv("PREFIXKV_HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("PREFIXKV_BODY_TIMEOUT", "7")
    monkeypatch.setenv("PREFIXKV_MAX_CONNECTIONS", "64")
    args = cli.build_parser().parse_args(["serve"])
    assert (args.header_timeout, args.body_timeout, args.max_connections) == (2.5, 7.0, 64)
    for flag in ("--header-timeout", "--body-timeout"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["serve", flag, "0"])
        assert f"{flag}: invalid value '0'" in capsys.readouterr().err


# Slow: a real server with 256 file descriptors.

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_CONNECTIONS = 200


def limit_files(count: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@pytest.fixture(scope="module")
def guarded_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 600:
        pytest.skip("the test opens 300 connections; raise `ulimit -n`")
    log = tmp_path_factory.mktemp("logs") / "guarded-server.log"
    args = ["--model", str(tiny_model_dir), *TINY_ARGS, "--header-timeout", str(HEADER_TIMEOUT)]
    args += ["--body-timeout", str(BODY_TIMEOUT), "--max-connections", str(MAX_CONNECTIONS)]
    server = ServerProcess(args, log, preexec_fn=limit_files(256)).wait_ready()
    yield server
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


@contextmanager
def silent_connections(server: ServerProcess, count: int) -> Iterator[list[socket.socket]]:
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()
        assert wait_for(lambda: server.get("/health").status_code == 200, timeout=10)


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.serial  # timeouts of seconds, measured against the clock
def test_300_silent_connections_cannot_lock_out_a_client(guarded_server: ServerProcess) -> None:
    server = guarded_server
    log_before = server.log.stat().st_size
    with silent_connections(server, 300) as socks:
        start = time.monotonic()
        response = httpx.get(server.url + "/health", timeout=HEADER_TIMEOUT + 10)
        waited = time.monotonic() - start
        assert response.status_code == 200
        # Queued behind ~250 accepted silent connections until the header timeout closes them
        # (asyncio retries accept() once a second while descriptors are out).
        assert waited < HEADER_TIMEOUT + 2.5, waited
        assert closed_by_server(socks[0], timeout=1) is not None
        time.sleep(1.0)
        grown = server.log.read_bytes()[log_before:]
    assert b"socket.accept() out of system resource" in grown  # descriptors did run out
    assert len(grown) < 2048 and b"Traceback" not in grown, grown.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.serial  # timeouts of seconds, measured against the clock
def test_slowloris_is_disconnected_by_the_header_timeout(guarded_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", guarded_server.port)) as sock:
        sent, elapsed = trickle(sock, REQUEST[:-2], interval=0.5, timeout=HEADER_TIMEOUT + 3)
    assert sent >= 3 and HEADER_TIMEOUT - 0.5 < elapsed < HEADER_TIMEOUT + 1.5


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.serial  # timeouts of seconds, measured against the clock
def test_a_trickled_body_is_disconnected_by_the_body_timeout(
    guarded_server: ServerProcess,
) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", guarded_server.port)) as sock:
        sock.sendall(head)
        sent, elapsed = trickle(sock, b" " * 1000, interval=0.5, timeout=BODY_TIMEOUT + 3)
    assert sent >= 3 and BODY_TIMEOUT - 0.5 < elapsed < BODY_TIMEOUT + 1.5
    assert guarded_server.get("/health").status_code == 200


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.serial  # timeouts of seconds, measured against the clock
def test_keep_alive_client_makes_several_requests_on_one_connection(
    guarded_server: ServerProcess,
) -> None:
    body = b'{"model": "tiny", "prompt": "The ferry", "max_tokens": 4, "temperature": 0}'
    completion = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", guarded_server.port)) as sock:
        assert exchange(sock).startswith(b"HTTP/1.1 200")
        assert exchange(sock, completion).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT + 0.5)  # idle past the header timeout, within keep-alive (5 s)
        assert exchange(sock).startswith(b"HTTP/1.1 200")
        elapsed = closed_by_server(sock, timeout=10)
    assert elapsed is not None and 4.0 < elapsed < 7.0  # uvicorn's keep-alive timeout, 5 s


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.serial  # timeouts of seconds, measured against the clock
def test_more_connections_than_the_limit_get_a_fast_503(guarded_server: ServerProcess) -> None:
    server = guarded_server
    log_before = server.log.stat().st_size
    with silent_connections(server, MAX_CONNECTIONS + 5):
        start = time.monotonic()
        response = httpx.get(server.url + "/health", timeout=HEADER_TIMEOUT + 10)
        assert response.status_code == 503 and time.monotonic() - start < 1.5
        assert all(server.get("/health").status_code == 503 for _ in range(20))
        assert wait_for(
            lambda: server.get("/health").status_code == 200, timeout=HEADER_TIMEOUT + 2
        )
    grown = server.log.read_bytes()[log_before:]
    assert b"out of system resource" not in grown
    assert grown.count(b"Exceeded concurrency limit") == 1, grown  # once per 10 s
