"""Real ``redis-server`` processes for the Redis tier's tests, on free loopback ports, without
persistence, stopped after each test.

redis-server missing: its tests skip, unless ``PREFIXKV_REQUIRE_REDIS=1`` (set by ``.ci/run``),
then they fail saying how to install it. A test using these fixtures must be marked
``@pytest.mark.process``.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.requirements import missing

INSTALL = "install it: sudo apt-get install redis-server (Debian, Ubuntu)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_path() -> str:
    """The redis-server executable; skips the test (fails it under PREFIXKV_REQUIRE_REDIS=1)
    if there is none."""
    path = shutil.which("redis-server")
    if path is None:
        missing("PREFIXKV_REQUIRE_REDIS", f"redis-server not found: {INSTALL}")
    return path


@cache
def _major_version(path: str) -> int:
    output = subprocess.run([path, "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"v=(\d+)\.", output.stdout)
    return int(found.group(1)) if found else 0


class RedisServer:
    """One redis-server on 127.0.0.1:``port``; ``start()`` returns once it answers PING.
    Stopped and started again, it keeps its port (and, without persistence, loses its data)."""

    def __init__(self, log: Path, args: tuple[str, ...], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = log
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        path = redis_server_path()
        command = [path, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", *self.args]
        if _major_version(path) >= 7:  # DEBUG is off by default from Redis 7 on
            command += ["--enable-debug-command", "yes"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.log.read_text()}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.01)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    @contextmanager
    def client(self, timeout: float = 5.0) -> Iterator[redis.Redis]:
        """A plain client of this server, without retries (closed after the block)."""
        client = redis.Redis(
            port=self.port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            yield client
        finally:
            client.close()

    def wait_until_asleep(self) -> None:
        """Return once the server stops answering (e.g. another client sent DEBUG SLEEP)."""
        with self.client(timeout=0.05) as probe:
            for _ in range(200):
                try:
                    probe.ping()
                except redis.TimeoutError:
                    return
                time.sleep(0.01)
        raise AssertionError("the server still answers")


StartRedis = Callable[..., RedisServer]


@pytest.fixture
def redis_executable() -> str:
    """The path of redis-server; skips (or fails, see the module docstring) if there is none."""
    return redis_server_path()


@pytest.fixture
def start_redis(redis_executable: str, tmp_path: Path) -> Iterator[StartRedis]:
    """``start_redis(*args)``: a running redis-server with extra ``args`` (e.g.
    ``"--maxmemory", "4mb"``); every one started is stopped after the test."""
    servers: list[RedisServer] = []

    def start(*args: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}.log", args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(start_redis: StartRedis) -> RedisServer:
    """A running redis-server with default settings (no maxmemory)."""
    return start_redis()
