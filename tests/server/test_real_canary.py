"""The exactness canary in a real ``prefixkv serve`` on the tiny model: with every served
prefix checked (``--canary-rate 1``), repeated prompts are recomputed and found exact, in
``/metrics`` and on the dashboard; on PyTorch's own linear kernel it turns itself off and
says why."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import TINY_ARGS
from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]

DOCUMENT = "The lighthouse keeper logs every ship, gull and storm. " * 6


def start(model_dir: Path, tmp_path: Path, *extra: str) -> ServerProcess:
    args = ["--model", str(model_dir), *TINY_ARGS, "--canary-rate", "1", *extra]
    return ServerProcess(args, tmp_path / "server.log").wait_ready()


def ask(server: ServerProcess, question: str) -> Any:
    return server.client().chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": DOCUMENT}, {"role": "user", "content": question}],
        max_tokens=4,
        temperature=0,
    )


def test_served_prefixes_are_checked_and_found_exact(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = start(tiny_model_dir, tmp_path)
    try:
        for question in ("Any ships?", "Any gulls?", "Any storms?"):
            ask(server, question)
        deadline = time.monotonic() + 30
        while server.metrics()["prefixkv_canary_checks_total"] < 2:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        figures = server.metrics()
        assert figures["prefixkv_canary_mismatches_total"] == 0
        assert figures["prefixkv_canary_recomputed_tokens_total"] >= 2 * len(DOCUMENT) // 2
        time.sleep(2.5)  # a dashboard point or two
        points = server.get("/v1/dashboard").json()["points"]
        assert points[-1]["canary_checks"] >= 2 and points[-1]["canary_mismatches"] == 0
    finally:
        assert server.stop() == 0, server.output()
    assert "exactness canary" not in server.output()  # no mismatch logged, not turned off


def test_it_turns_itself_off_on_pytorchs_linear_kernel(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = start(tiny_model_dir, tmp_path, "--linear-kernel", "torch")
    try:
        ask(server, "Any ships?")
        ask(server, "Any gulls?")
        assert server.metrics()["prefixkv_canary_checks_total"] == 0
    finally:
        assert server.stop() == 0, server.output()
    assert "the exactness canary is off" in server.output()
