"""Structured outputs as the HTTP API asks for them, read into a GrammarSpec.

Two forms, one per request (both at once is a 400):

- OpenAI's ``response_format``: ``{"type": "text"}`` (no constraint), ``{"type":
  "json_object"}`` (any JSON object), ``{"type": "json_schema", "json_schema": {"name",
  "schema", "strict"}}`` (the schema enforced whatever ``strict`` says: a mask cannot be
  half-applied).
- vLLM's ``structured_outputs`` extension (its current form; the older ``guided_*`` fields
  are not read): exactly one of ``json`` (a schema, or its JSON text), ``regex``, ``choice``
  (a list of strings: the reply is one of them), ``grammar`` (a Lark grammar, llguidance's
  dialect).

A schema is kept in the order it was sent (not key-sorted): llguidance writes an object's
properties in the schema's order, as OpenAI does, so ``{"name", "age"}`` comes out name
first (tests/server/test_conformance.py found them sorted).

Only the shapes are checked here; whether a schema, regex or grammar compiles is found by
the engine (``Intake.request``), which names the field in its 400.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from prefixkv.engine.request import GrammarSpec, short_repr, wrong_type
from prefixkv.server.errors import APIError

_STRUCTURED_KINDS = ("json", "regex", "choice", "grammar")


def grammar_of(body: Mapping[str, Any]) -> GrammarSpec | None:
    """The request's constraint, or None; raises APIError naming the first bad field."""
    response_format = _response_format(body.get("response_format"))
    structured = _structured_outputs(body.get("structured_outputs"))
    if response_format is not None and structured is not None:
        raise APIError.invalid(
            "send either response_format or structured_outputs, not both", "structured_outputs"
        )
    return response_format or structured


def _response_format(value: object) -> GrammarSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise wrong_type("response_format", "an object", value)
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_schema", '{"type": "object"}', "response_format")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise wrong_type("response_format.json_schema", "an object", spec)
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise wrong_type("response_format.json_schema.name", "a non-empty string", name)
        param = "response_format.json_schema.schema"
        schema = spec.get("schema", {})  # OpenAI: no schema means any JSON value
        if not isinstance(schema, dict):
            raise wrong_type(param, "an object", schema)
        return GrammarSpec("json_schema", json.dumps(schema), param)
    raise APIError.invalid(
        "response_format.type must be 'text', 'json_object' or 'json_schema', got "
        f"{short_repr(kind)}",
        "response_format.type",
    )


def _structured_outputs(value: object) -> GrammarSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise wrong_type("structured_outputs", "an object", value)
    given = [k for k in _STRUCTURED_KINDS if value.get(k) is not None]
    if len(given) != 1:
        raise APIError.invalid(
            f"structured_outputs must set exactly one of {', '.join(_STRUCTURED_KINDS)}",
            "structured_outputs",
        )
    kind = given[0]
    param, item = f"structured_outputs.{kind}", value[kind]
    if kind == "json":
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except ValueError:
                raise APIError.invalid(f"{param} is not valid JSON", param) from None
        if not isinstance(item, dict):
            raise wrong_type(param, "a JSON schema (an object)", item)
        return GrammarSpec("json_schema", json.dumps(item), param)
    if kind == "choice":
        if not isinstance(item, list) or not item or not all(isinstance(c, str) for c in item):
            raise wrong_type(param, "a non-empty list of strings", item)
        return GrammarSpec("lark", choice_grammar(item), param)
    if not isinstance(item, str) or not item:
        raise wrong_type(param, "a non-empty string", item)
    return GrammarSpec("regex" if kind == "regex" else "lark", item, param)


def choice_grammar(choices: list[str]) -> str:
    """A Lark grammar whose only sentences are ``choices`` (JSON string literals, which
    llguidance's Lark reads with JSON's escapes)."""
    return "start: " + " | ".join(json.dumps(c) for c in choices)
