"""The cache-aware router ``prefixkv bench fleet`` puts in front of its replicas: vLLM's
``vllm-router`` (the ``vllm-router`` package, a Rust binary behind a Python launcher; the
``fleet`` extra), in a subprocess on a free loopback port.

Of the routers on the package index it is the one that runs here against plain
OpenAI-compatible workers with all three policies this bench compares: ``cache_aware``
(an approximate per-worker prefix tree of the request text the router itself has sent),
``round_robin``, and ``kv_aware``, which builds its tree from each worker's vLLM-format KV
events over ZeroMQ (``prefixkv serve --kv-events``) instead of guessing. ``sglang-router``
0.3.2 has ``cache_aware`` and ``round_robin`` and no event input; ``smg`` 1.13.0 has an
event-driven index, fed over its own engine connections (gRPC, or a ZeroMQ ``ipc://``
handshake with vLLM/SGLang schedulers), not from an HTTP worker's PUB endpoint.

The router retries a request on another worker when it cannot connect (a killed replica),
before any byte reached the client, and counts it (``retries()``); a reply cut off
mid-stream cannot be retried by it, and is the client's to retry
(:mod:`prefixkv.bench.fleet_client`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from prefixkv.bench.processes import stop_process

CACHE_AWARE = "cache_aware"
ROUND_ROBIN = "round_robin"
KV_AWARE = "kv_aware"
POLICIES = (CACHE_AWARE, ROUND_ROBIN, KV_AWARE)
BINARY = "vllm-router"
INSTALL = "pip install 'prefixkv[fleet]' (the vllm-router package)"


def router_binary() -> Path | None:
    """``vllm-router`` next to this Python (the ``fleet`` extra), else on PATH; None if
    neither."""
    beside = Path(sys.executable).parent / BINARY
    if beside.is_file():
        return beside
    found = shutil.which(BINARY)
    return None if found is None else Path(found)


@dataclass(frozen=True)
class Worker:
    """One replica as the router sees it: its HTTP URL, and its KV events' ZeroMQ PUB
    endpoint (``kv_aware`` subscribes to it)."""

    url: str
    events: str


@dataclass(frozen=True)
class RouterConfig:
    policy: str  # one of POLICIES
    workers: tuple[Worker, ...]
    block_size: int  # the replicas' --block-size: kv_aware hashes its own blocks of this size
    model: str  # the model id the replicas serve (kv_aware's --kv-event-model)


def router_argv(binary: Path, config: RouterConfig, port: int, metrics_port: int) -> list[str]:
    """The command line of a router on ``port`` of the loopback with ``config``'s policy.
    Health checks every second and one failure to mark a worker down: a killed replica
    leaves the rotation within a second instead of a minute (the default)."""
    argv = [str(binary), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--worker-urls", *(w.url for w in config.workers), "--policy", config.policy]
    argv += ["--prometheus-port", str(metrics_port), "--log-level", "warning"]
    argv += ["--health-check-interval-secs", "1", "--health-failure-threshold", "1"]
    if config.policy == KV_AWARE:
        for worker in config.workers:
            argv += ["--kv-event-source", f"{worker.url}={worker.events}"]
        argv += ["--kv-event-block-size", str(config.block_size)]
        argv += ["--kv-event-model", config.model]
    return argv


class RouterProcess:
    """One router in a subprocess, logging to ``log``; ``url`` is where clients send."""

    def __init__(
        self, binary: Path, config: RouterConfig, log: Path, port: int, metrics_port: int
    ) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                router_argv(binary, config, port, metrics_port),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, headers: Mapping[str, str], timeout: float = 120.0) -> float:
        """Seconds until the router lists the replicas' model (it waits for every worker's
        health first), asked with ``headers``; RuntimeError with the log's tail if it
        exits."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"vllm-router exited:\n{tail}")
            try:
                if (
                    httpx.get(self.url + "/v1/models", headers=headers, timeout=2.0).status_code
                    == 200
                ):
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"vllm-router not ready after {timeout} s; log: {self.log}")

    def retries(self) -> int:
        """Requests the router sent again (to another worker, after a failed attempt) since
        it started: its ``vllm_router_retries_total``, over every route."""
        response = httpx.get(self.metrics_url, timeout=10.0)
        response.raise_for_status()
        return sum(
            int(sample.value)
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name == "vllm_router_retries_total"
        )

    def stop(self) -> None:
        stop_process(self.process, 30)
