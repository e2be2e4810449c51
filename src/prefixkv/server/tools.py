"""The chat API's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, validated once, and
the tool parts of a history (assistant ``tool_calls``, ``tool`` messages) as plain turns.

Tools reach the model as a Hermes-style system block (the functions' JSON signatures inside
``<tools></tools>``, and the instruction to answer with ``<tool_call>{json}</tool_call>``),
the format :mod:`prefixkv.server.tool_calls` parses and vLLM's ``hermes`` parser expects.
The block, past calls and tool results are rendered into ordinary system, assistant and user
messages, which then go through the model's own chat template like any other turn, so the
content-as-plain-text guarantee of :mod:`prefixkv.engine.prompts` holds for them too. The
rendering is deterministic and each message's rendering depends on that message only, so an
agent resending a growing history sends a growing prefix: the cache reuses it.

``required`` and a named ``tool_choice`` are enforced by a grammar built from
:meth:`ToolSpec.forced_schema` (:mod:`prefixkv.server.tool_grammar`): the reply can only be
calls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prefixkv.engine.request import short_repr, wrong_type
from prefixkv.server.errors import APIError

Choice = Literal["auto", "none", "required", "function"]
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
_MODES: tuple[Choice, ...] = ("auto", "none", "required")
_ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class Function:
    """One declared function; ``parameters`` is its JSON schema (``{}`` when not given)."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def signature(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass(frozen=True)
class ToolSpec:
    """A request's tools. ``choice`` "function" forces ``forced`` (a declared name)."""

    functions: tuple[Function, ...]
    choice: Choice
    forced: str
    parallel: bool

    @property
    def names(self) -> frozenset[str]:
        """The names a parsed call may carry (only the forced one for a named choice)."""
        if self.choice == "function":
            return frozenset({self.forced})
        return frozenset(f.name for f in self.functions)

    def forced_schema(self) -> dict[str, Any] | None:
        """The JSON schema one call must match when the choice forces a call (``required``
        or named), which :func:`prefixkv.server.tool_grammar.tool_grammar` enforces; None
        when the model may answer in text. A function without parameters takes any object
        (the parser reads only object arguments). Each function's schema is nested under
        its option's ``arguments``, so its local ``$ref``s (``#/$defs/...``) are rebased
        there."""
        if self.choice in ("auto", "none"):
            return None
        chosen = [f for f in self.functions if f.name in self.names]
        single = len(chosen) == 1
        options = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": f.name},
                    "arguments": rebased(
                        f.parameters or _ANY_OBJECT,
                        "#/properties/arguments" if single else f"#/anyOf/{i}/properties/arguments",
                    ),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for i, f in enumerate(chosen)
        ]
        return options[0] if single else {"anyOf": options}


def rebased(schema: Any, base: str) -> Any:
    """``schema`` with every local ``$ref`` (``#`` or ``#/...``) moved under the JSON
    pointer ``base``; other values as they are."""
    if isinstance(schema, dict):
        return {
            k: base + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#")
            else rebased(v, base)
            for k, v in schema.items()
        }  # fmt: skip
    if isinstance(schema, list):
        return [rebased(v, base) for v in schema]
    return schema


def parse_tools(body: Mapping[str, Any]) -> ToolSpec | None:
    """The request's tools, or None when it declares none (``tool_choice`` may then only be
    absent, "none" or "auto"). Raises APIError naming the first bad field."""
    raw = body.get("tools")
    if raw is not None and not isinstance(raw, list):
        raise wrong_type("tools", "a list of tools", raw)
    functions = tuple(_function(tool, i) for i, tool in enumerate(raw or []))
    names = [f.name for f in functions]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise APIError.invalid(
                f"tools declares the function {name!r} twice", f"tools[{i}].function.name"
            )
    choice, forced = _choice(body.get("tool_choice"), frozenset(names))
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise wrong_type("parallel_tool_calls", "a boolean", parallel)
    if not functions:
        return None
    return ToolSpec(functions, choice, forced, parallel is not False)


def _function(tool: object, i: int) -> Function:
    where = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise wrong_type(where, "an object", tool)
    if tool.get("type") != "function":
        raise APIError.invalid(
            f'{where}.type must be "function", got {short_repr(tool.get("type"))}',
            f"{where}.type",
        )
    function = tool.get("function")
    if not isinstance(function, dict):
        raise wrong_type(f"{where}.function", "an object", function)
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise APIError.invalid(
            f"{where}.function.name must be 1 to 64 letters, digits, _ or -, got "
            f"{short_repr(name)}",
            f"{where}.function.name",
        )
    description = function.get("description", "")
    if not isinstance(description, str):
        raise wrong_type(f"{where}.function.description", "a string", description)
    parameters = function.get("parameters", {})
    if not isinstance(parameters, dict):
        raise wrong_type(f"{where}.function.parameters", "a JSON schema object", parameters)
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise wrong_type(f"{where}.function.strict", "a boolean", strict)
    return Function(name, description, parameters)


def _choice(raw: object, names: frozenset[str]) -> tuple[Choice, str]:
    """``tool_choice`` as (mode, forced name); the name is "" unless the mode is
    "function"."""
    if raw is None:
        return "auto", ""
    if isinstance(raw, str):
        mode = next((m for m in _MODES if m == raw), None)
        if mode is None:
            raise APIError.invalid(
                f'tool_choice must be "auto", "none", "required" or a function, got '
                f"{short_repr(raw)}",
                "tool_choice",
            )
        if mode == "required" and not names:
            raise APIError.invalid('tool_choice "required" needs tools', "tool_choice")
        return mode, ""
    if not isinstance(raw, dict) or raw.get("type") != "function":
        raise wrong_type("tool_choice", '"auto", "none", "required" or a function', raw)
    function = raw.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or name not in names:
        raise APIError.invalid(
            f"tool_choice names the function {short_repr(name)}, which tools does not declare",
            "tool_choice.function.name",
        )
    return "function", name
