"""SmolLM2's constrained replies (a named and a ``required`` tool call, a json_schema reply,
greedy and sampled) choose the same tokens through the shipped bitmask path as through the
torch reference it replaced, on the batch runner the server steps; and they are constrained
(a call of the named function, JSON of the schema), so the comparison is of masked runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prefixkv.bench.conformance import PERSON, WEATHER
from prefixkv.engine import bitmask, processors
from prefixkv.engine.batch.records import BatchLimits
from prefixkv.engine.batch.runner import BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.sinks import Collect
from prefixkv.server.parse import parse_chat
from prefixkv.server.settings import ServerSettings

from .conftest import with_own_cache

pytestmark = pytest.mark.smollm2
pytest.importorskip("llguidance", reason="the grammar extra is not installed")

NAMED = {"type": "function", "function": {"name": "get_weather"}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
BODIES: dict[str, dict[str, Any]] = {
    "named": {"tools": [WEATHER], "tool_choice": NAMED},
    "required": {"tools": [WEATHER], "tool_choice": "required"},
    "schema": {"response_format": SCHEMA},
    "schema-sampled": {"response_format": SCHEMA, "temperature": 0.9, "seed": 11},
}


def _replies(engine: Engine) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each body's tokens and text, all four requests batched on one runner."""
    settings = ServerSettings(model_names=("smollm2",))
    runner = BatchRunner(engine, BatchLimits())
    sinks = {}
    for name, extra in BODIES.items():
        body = {"model": "smollm2", "max_tokens": 60, "temperature": 0, **extra,
                "messages": [{"role": "user", "content": f"Paris: weather, and a {name}?"}]}  # fmt: skip
        parsed = parse_chat(body, settings)
        request = engine.request(parsed.prompt, parsed.params, namespace=object())
        sinks[name] = Collect()
        runner.submit(request, sinks[name])
    while runner.num_running or runner.num_waiting:
        runner.step()
    return {name: (s.result().token_ids, s.result().text) for name, s in sinks.items()}


def test_the_shipped_mask_chooses_the_reference_tokens(
    smollm2_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each run on its own empty cache: both compute every prompt token the same way.
    with monkeypatch.context() as patched:
        patched.setattr(bitmask, "apply_bitmask", bitmask.apply_bitmask_reference)
        patched.setattr(processors, "private_copy", lambda logits: logits.clone())
        reference = _replies(with_own_cache(smollm2_engine, 64 << 20))
    shipped = _replies(with_own_cache(smollm2_engine, 64 << 20))
    assert shipped == reference
    named = shipped["named"][1]
    assert named.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "')
    for name in ("schema", "schema-sampled"):
        text = shipped[name][1]
        assert set(json.loads(text)) == {"name", "age"}, text
