"""``prefixkv bench soak``: one sample of the server under test, taken from outside it.

From Linux's ``/proc/<pid>``: resident memory (``VmRSS``) and open descriptors (entries of
``fd/``, sockets among them). From the server: ``/v1/cache/stats`` (pool occupancy, whose
conservation law is ``free + used + reserved == total``, and each lower tier's counters) and
``/metrics`` (5xx answers, failed generations, running and waiting requests, preemptions).
From its log file: lines at level ERROR or CRITICAL and tracebacks (errors), and the Redis
tier's "is down" / "is back" lines. From the clients: the counts they keep
(:class:`ClientCounts`). Every count is cumulative since the start.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from prometheus_client.parser import text_string_to_metric_families

LOAD, QUIET, FINAL = "load", "quiet", "final"
_ERROR_LINE = re.compile(r"^(ERROR|CRITICAL)\b|Traceback \(most recent call last\)")
_REDIS_DOWN = re.compile(r"Redis tier .* is down")
_REDIS_BACK = re.compile(r"Redis tier .* is back")
_KEPT_LINES = 20  # error lines kept for the report


class ClientCounts(NamedTuple):
    served: int  # replies read to the end with status 200
    disconnects: int  # streams the client dropped on purpose
    errors: int  # any other outcome: an exception, a status other than 200, a bad reply


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the traffic started
    kind: str  # LOAD; QUIET: clients paused and the server idle; FINAL: after the run
    redis_up: bool
    rss_bytes: int
    fds: int
    sockets: int
    clients: ClientCounts
    server_5xx: int
    failed_generations: int
    log_errors: int
    running: int
    waiting: int
    preemptions: int
    cache: dict[str, int]  # the pool fields of /v1/cache/stats
    tiers: dict[str, dict[str, float]]  # each lower tier's counters, by tier name

    @property
    def lost_blocks(self) -> int:
        """Pool blocks neither free, nor cached, nor reserved: 0 unless the pool leaks."""
        c = self.cache
        return c["total_blocks"] - c["free_blocks"] - c["used_blocks"] - c["reserved_blocks"]

    def tier(self, name: str, counter: str) -> float:
        """A counter of tier ``name`` (0 when the server has no such tier)."""
        return self.tiers.get(name, {}).get(counter, 0.0)

    @property
    def tier_errors(self) -> dict[str, int]:
        """Failed operations, rejected and corrupt records, by tier."""
        names = ("errors", "verification_failures", "corrupt_blocks")
        return {t: int(sum(c.get(n, 0) for n in names)) for t, c in self.tiers.items()}


_POOL = (
    "free_blocks",
    "used_blocks",
    "reserved_blocks",
    "pinned_blocks",
    "total_blocks",
    "evicted_blocks",
    "inserted_blocks",
    "query_tokens",
    "hit_tokens",
)


def resident_bytes(pid: int) -> int:
    """Process ``pid``'s resident memory (``VmRSS``), in bytes; OSError when it is gone."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    if found is None:
        raise OSError(f"no VmRSS in /proc/{pid}/status (the process is exiting)")
    return int(found.group(1)) * 1024


def process_usage(pid: int) -> tuple[int, int, int]:
    """(resident bytes, open descriptors, of which sockets) of process ``pid``; OSError when
    it is gone."""
    resident = resident_bytes(pid)
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = []
    for entry in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(fd_dir / entry))
        except OSError:  # closed between the listing and the read
            continue
    return resident, len(targets), sum(t.startswith("socket:") for t in targets)


def metric_values(text: str) -> dict[str, float]:
    """The figures the soak reads from a Prometheus exposition, summed over labels."""
    out = {"5xx": 0.0, "failed": 0.0, "running": 0.0, "waiting": 0.0, "preemptions": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "prefixkv_http_requests_total" and s.labels["status"].startswith("5"):
                out["5xx"] += s.value
            elif s.name == "prefixkv_requests_total" and s.labels["outcome"] == "failed":
                out["failed"] += s.value
            elif s.name == "prefixkv_num_requests_running":
                out["running"] = s.value
            elif s.name == "prefixkv_num_requests_waiting":
                out["waiting"] = s.value
            elif s.name == "prefixkv_num_preemptions_total":
                out["preemptions"] = s.value
    return out


@dataclass
class LogScan:
    """What the server's log said so far; ``feed`` reads what was appended since."""

    path: Path
    offset: int = 0
    errors: int = 0
    redis_down: int = 0
    redis_back: int = 0
    error_lines: list[str] = field(default_factory=list)

    def feed(self) -> None:
        """Read the whole lines appended since the last call (a partial last line waits)."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            if _ERROR_LINE.search(line):
                self.errors += 1
                if len(self.error_lines) < _KEPT_LINES:
                    self.error_lines.append(line[:300])
            self.redis_down += bool(_REDIS_DOWN.search(line))
            self.redis_back += bool(_REDIS_BACK.search(line))


async def take(
    http: httpx.AsyncClient,
    pid: int,
    log: LogScan,
    head: tuple[float, str, bool],
    clients: ClientCounts,
) -> Sample:
    """One sample; ``head``: (t, kind, Redis up). ``http`` has the server's base URL.
    Raises httpx errors when the server does not answer, OSError when its process is gone."""
    stats = (await http.get("/v1/cache/stats")).raise_for_status().json()
    metrics = metric_values((await http.get("/metrics")).raise_for_status().text)
    rss, fds, sockets = process_usage(pid)
    log.feed()
    tiers: dict[str, dict[str, Any]] = {
        str(t["tier"]): {k: v for k, v in t.items() if isinstance(v, int | float)}
        for t in stats["tiers"]
    }
    t, kind, redis_up = head
    return Sample(
        t=t,
        kind=kind,
        redis_up=redis_up,
        rss_bytes=rss,
        fds=fds,
        sockets=sockets,
        clients=clients,
        server_5xx=int(metrics["5xx"]),
        failed_generations=int(metrics["failed"]),
        log_errors=log.errors,
        running=int(metrics["running"]),
        waiting=int(metrics["waiting"]),
        preemptions=int(metrics["preemptions"]),
        cache={k: int(stats[k]) for k in _POOL},
        tiers=tiers,
    )
