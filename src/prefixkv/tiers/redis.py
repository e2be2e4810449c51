"""The Redis tier: records shared by every replica that points at one Redis server.

Each record (:mod:`prefixkv.tiers.record`) is one string under ``key_prefix + hex_name(name)``
(32 hex digits), no TTL: bound Redis with ``maxmemory`` and an ``allkeys-*`` policy. Names are
hashes with the namespace folded in: nothing readable of a tenant reaches Redis.

Failures (refused connections, timeouts: ``timeout`` bounds each connect and socket read, error
replies such as OOM under ``noeviction``) count in ``errors`` and are answered as misses or
dropped writes, never raised. Down or slow, the server is left alone for ``retry_after``
seconds (a circuit breaker: calls answer at once, uncounted), then one call probes it. One
warning when it goes down or starts refusing writes, one info line when it is back.

Costs: one round trip per ``get_many`` (one MGET), two per ``put_many`` (pipelined EXISTS,
then pipelined SET NX for the missing names only), one per ``discard``. Thread-safe: the
connection pool gives each concurrent call its own connection; counters are under a lock.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from prefixkv.redaction import redacted_url
from prefixkv.tiers.protocol import NoTierEvents, TierCounters, TierEvents, hex_name

log = logging.getLogger(__name__)

T = TypeVar("T")

_DOWN = (redis.RedisError, OSError)
"""Failures that open the circuit breaker, except ``redis.ResponseError``: an error reply (OOM,
a read-only replica) comes from a server that is up and fast; it is only counted."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


_FORM = "redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]"


def check_url(url: str) -> None:
    """Raise ValueError naming ``url`` (password hidden) unless it has the form ``_FORM``."""
    _connection_options(url)


def _connection_options(url: str) -> dict[str, Any]:
    """Pool options for a URL of form ``_FORM``; ValueError naming it (password hidden) for
    anything else."""
    shown = redacted_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError unless a number in 0..65535
    except ValueError:
        # Its message is not shown: it quotes the "port", which is part of the password when
        # the password holds an unescaped '/' (redis://u:pa/ss@h ends the host part there).
        raise ValueError(
            f"not a Redis URL: {shown!r} (a bad host or port; expected {_FORM})"
        ) from None
    if (
        parts.scheme not in ("redis", "rediss")
        or not parts.hostname
        or not re.fullmatch(r"/?|/[0-9]+", parts.path)  # the database number
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"not a Redis URL: {shown!r} (expected {_FORM})")
    return {
        "host": unquote(parts.hostname or ""),
        "port": port or 6379,
        "db": int(parts.path.strip("/") or 0),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "connection_class": redis.SSLConnection if parts.scheme == "rediss" else redis.Connection,
    }


def redis_sharing(url: str) -> str:
    """Why a Redis tier is always shared: every client of the server (every replica, and
    anyone else its ACLs let in) reads and writes the same keys. Hides the password."""
    return f"the Redis tier {redacted_url(url)} is shared by every client of that server"


class RedisTier:
    """Records in Redis at ``url`` (``redis://HOST:PORT/DB``, ``rediss://`` for TLS): a
    malformed URL raises ValueError, an unreachable server does not (the tier starts down).

    ``counters()``: ``blocks`` / ``bytes`` are the records this process wrote minus those it
    discarded; Redis may hold more (written by other replicas) or fewer (its own ``maxmemory``
    eviction, unseen here: ``evicted_blocks`` stays 0). ``capacity_bytes`` is 0. ``reads`` /
    ``read_seconds``: ``get_many`` calls Redis answered; ``write_seconds``: ``put_many`` calls
    that reached it."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.25,
        retry_after: float = 1.0,
        key_prefix: str = "prefixkv:",
    ) -> None:
        options = _connection_options(url)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (retry_after >= 0 and math.isfinite(retry_after)):
            raise ValueError(f"retry_after must be >= 0 seconds, got {retry_after!r}")
        self.url = redacted_url(url)
        self._prefix = key_prefix
        self._retry_after = retry_after
        options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
        # No retries inside redis-py: a failure costs one timeout at most, then the breaker.
        self._pool = redis.ConnectionPool(**options, retry=Retry(NoBackoff(), 0))
        self._client = redis.Redis(connection_pool=self._pool)
        self._lock = threading.Lock()
        self.events: TierEvents = NoTierEvents()  # told under the lock (see TierEvents)
        self._closed = False
        self._down = False  # the breaker is open
        self._refusing = False  # the last write got an error reply
        self._probe_at = 0.0  # while down: when the next call may try the server
        self._blocks = self._bytes = self._reads = self._writes = self._errors = 0
        self._read_seconds = self._write_seconds = 0.0
        self._call(self._client.ping)  # to warn at start-up if it is down; never raises

    def _key(self, name: bytes) -> str:
        return self._prefix + hex_name(name)

    def _admit(self) -> bool:
        """Whether a call may go to the server now: the breaker is closed, or it is open and
        ``retry_after`` has passed (then this call is the one probe until it answers)."""
        with self._lock:
            if self._closed:
                return False
            if not self._down:
                return True
            now = time.monotonic()
            if now < self._probe_at:
                return False
            self._probe_at = now + self._retry_after
            return True

    def _call(self, operation: Callable[[], T]) -> T | None:
        """``operation()``, or None if the breaker is open or it failed (counted, logged)."""
        if not self._admit():
            return None
        result: T | None = None
        try:
            result = operation()
        except redis.ResponseError as exc:  # an error reply: the server is up
            self._refused(exc, 1)
        except _DOWN as exc:
            with self._lock:
                self._errors += 1
                self._probe_at = time.monotonic() + self._retry_after
                was_down, self._down = self._down, True
            if not was_down:
                message = "Redis tier %s is down (%s): answering misses, retrying every %gs"
                log.warning(message, self.url, _describe(exc), self._retry_after)
            return None
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            log.info("Redis tier %s is back", self.url)
        return result

    def _refused(self, exc: Exception, count: int) -> None:
        """``count`` operations got error reply ``exc``: count them, warn once."""
        with self._lock:
            self._errors += count
            was_refusing, self._refusing = self._refusing, True
        if not was_refusing:
            message = "Redis tier %s refused a command (%s): writes dropped until it takes them"
            log.warning(message, self.url, _describe(exc))

    def get_many(self, names: Sequence[bytes]) -> list[bytes | bytearray | None]:
        if not names:
            return []
        keys = [self._key(name) for name in names]
        start = time.perf_counter()
        values = self._call(lambda: self._client.mget(keys))
        if values is None:
            return [None] * len(names)
        elapsed = time.perf_counter() - start
        with self._lock:
            self._reads += 1
            self._read_seconds += elapsed
        return [value if isinstance(value, bytes) else None for value in values]

    def holds(self, names: Sequence[bytes]) -> list[bool]:
        """Pipelined EXISTS (no record is read, no TTL or recency touched)."""
        if not names:
            return []

        def exists() -> list[object]:
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.exists(self._key(name))
            return list(pipe.execute())

        found = self._call(exists)
        return [bool(value) for value in found] if found is not None else [False] * len(names)

    def _put(self, records: dict[str, bytes]) -> list[tuple[str, int, object]]:
        """Pipelined EXISTS, then pipelined SET NX for the missing keys; ``(bytes, reply)``
        per SET (with its key). SET NX alone sends every payload even for held keys: 16 records of 737 KB on
        loopback (redis 7.0, redis-py 8.1, medians), all held: 2.6-7.5 ms per call for SET NX,
        0.2 ms for EXISTS first; none held: both 3-7 ms (the extra round trip is noise). Re-puts
        of shared prefixes are common, and over a network the 11.8 MB not sent matter more.
        NX stays for names another replica writes between the two round trips."""
        with self._client.pipeline(transaction=False) as pipe:
            for key in records:
                pipe.exists(key)
            held = pipe.execute()
            pairs = zip(records.items(), held, strict=True)
            missing = [(key, record) for (key, record), n in pairs if not n]
            for key, record in missing:
                pipe.set(key, record, nx=True)
            replies = pipe.execute(raise_on_error=False) if missing else []
        pairs = zip(missing, replies, strict=True)
        return [(key, len(record), reply) for (key, record), reply in pairs]

    def put_many(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        unique: dict[str, bytes] = {}
        for name, record in records:
            unique.setdefault(self._key(name), record)
        if not unique:
            return
        start = time.perf_counter()
        results = self._call(lambda: self._put(unique))
        if results is None:
            return
        elapsed = time.perf_counter() - start
        written = [size for _, size, reply in results if reply is True]
        names = [bytes.fromhex(key[len(self._prefix) :]) for key, _, r in results if r is True]
        refused = [reply for _, _, reply in results if isinstance(reply, Exception)]
        with self._lock:
            if names:
                self.events.stored(self.name, names)
            self._writes += len(written)
            self._write_seconds += elapsed
            self._blocks += len(written)
            self._bytes += sum(written)
            back = self._refusing and bool(written) and not refused
            self._refusing = self._refusing and not back
        if refused:
            self._refused(refused[0], len(refused))
        elif back:
            log.info("Redis tier %s accepts writes again", self.url)

    def _delete(self, key: str) -> tuple[int, int]:
        with self._client.pipeline(transaction=False) as pipe:
            pipe.strlen(key)
            pipe.delete(key)
            size, deleted = pipe.execute()
        return int(size), int(deleted)

    def discard(self, name: bytes) -> None:
        key = self._key(name)
        result = self._call(lambda: self._delete(key))
        if result is None or not result[1]:
            return
        with self._lock:
            self.events.removed(self.name, (name,))
            self._blocks = max(0, self._blocks - 1)
            self._bytes = max(0, self._bytes - result[0])

    def announce(self) -> None:
        """Nothing: Redis may hold records of other replicas and of earlier runs, which this
        process cannot list without scanning a shared store; its own writes are told as
        they happen."""
        return None

    def sharing(self) -> str:
        return redis_sharing(self.url)

    def counters(self) -> TierCounters:
        with self._lock:
            return TierCounters(
                blocks=self._blocks,
                bytes=self._bytes,
                capacity_bytes=0,
                reads=self._reads,
                read_seconds=self._read_seconds,
                writes=self._writes,
                write_seconds=self._write_seconds,
                evicted_blocks=0,
                errors=self._errors,
            )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.disconnect()
