"""The shape of an OpenAI API response, and where two shapes differ: what the conformance
suite (:mod:`prefixkv.bench.conformance`) compares between ``prefixkv serve`` and a
reference server, since their texts may differ while their shapes must not.

A shape is plain JSON: a scalar becomes its type name (``"str"``, ``"int"``, ``"float"``,
``"bool"``, ``"null"``), except under the keys in ``KEPT`` (finish reasons, roles, object
names, indexes), whose values are the contract and are kept as ``"=<json>"``; a dict becomes
a dict of shapes; a list becomes ``{"[]": <the merged shape of its items>}``, with
``"len"`` too at the paths in ``COUNTED`` (n choices, tool calls, chat's top_logprobs),
where the count is the contract. A stream is the list of its chunks.

Merging (of a list's items, or a stream's chunks) keeps every alternative: two scalar shapes
become ``"a|b"``; two dicts merge key by key, a key missing from some items listed under
``"?"`` (optional); a scalar and a dict become the dict with the scalar alternatives under
``"|"`` (``logprobs`` null in one chunk and an object in another).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

KEPT = frozenset({"object", "finish_reason", "role", "type", "index"})
# chat: choices[].logprobs.content[].top_logprobs, streamed the same way
COUNTED = frozenset({"choices", "tool_calls", "top_logprobs"})
# completions' top_logprobs: one {token: logprob} map per token; the tokens are text
MAPS = frozenset({"choices[].logprobs.top_logprobs[]"})
_OPTIONAL = "?"
_SCALARS = "|"
_ITEMS = "[]"
_LEN = "len"


class Difference(NamedTuple):
    """One place two shapes disagree: ``path`` (``choices[].message.content``), and each
    side's shape there (``"absent"`` where a side lacks the key)."""

    path: str
    ours: str
    theirs: str


def shape(value: Any, path: str = "") -> Any:
    """The shape of one JSON value found at ``path`` (see the module's docstring)."""
    key = path.rsplit(".", 1)[-1].removesuffix(_ITEMS)
    if isinstance(value, dict):
        if path in MAPS:
            return {"<token>": merged([shape(v) for v in value.values()])}
        return {k: shape(v, f"{path}.{k}".lstrip(".")) for k, v in sorted(value.items())}
    if isinstance(value, list):
        found: dict[str, Any] = {_ITEMS: merged([shape(v, f"{path}[]") for v in value])}
        if key in COUNTED and not path.startswith("choices[].logprobs.top_logprobs"):
            found[_LEN] = f"={len(value)}"
        return found
    if key in KEPT and not isinstance(value, float):
        return "=" + json.dumps(value)
    return _type_name(value)


def stream_shape(chunks: list[Any]) -> Any:
    """The shape of a stream: its chunks' shapes merged."""
    return {"stream": merged([shape(c) for c in chunks])}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str"}.get(type(value), type(value).__name__)


def merged(shapes: list[Any]) -> Any:
    """One shape covering every shape in ``shapes`` (None for none: an empty list)."""
    if not shapes:
        return None
    out = shapes[0]
    for other in shapes[1:]:
        out = _merge(out, other)
    return out


def _merge(a: Any, b: Any) -> Any:
    if a is None or b is None:  # an empty list's items
        return b if a is None else a
    if isinstance(a, str) and isinstance(b, str):
        return "|".join(sorted(set(a.split("|")) | set(b.split("|"))))
    if isinstance(a, str) or isinstance(b, str):
        scalar, whole = (a, b) if isinstance(a, str) else (b, a)
        return {**whole, _SCALARS: _merge(whole.get(_SCALARS), scalar)}
    keys = (a.keys() | b.keys()) - {_OPTIONAL, _SCALARS}
    out: dict[str, Any] = {}
    optional = set(a.get(_OPTIONAL, [])) | set(b.get(_OPTIONAL, []))
    for k in sorted(keys):
        if k in a and k in b:
            out[k] = _merge(a[k], b[k])
        else:
            out[k] = a.get(k, b.get(k))
            optional.add(k)
    if optional:
        out[_OPTIONAL] = sorted(optional)
    scalars = _merge(a.get(_SCALARS), b.get(_SCALARS))
    if scalars is not None:
        out[_SCALARS] = scalars
    return out


def differences(ours: Any, theirs: Any, path: str = "") -> list[Difference]:
    """Every place ``ours`` and ``theirs`` differ, outermost first; [] when they agree."""
    return list(_walk(ours, theirs, path))


def _walk(ours: Any, theirs: Any, path: str) -> Iterator[Difference]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        # A key in only one side is reported once, as absent; whether a key both sides
        # have is in every item (chunk) or only some is reported at that key.
        both = (ours.keys() & theirs.keys()) - {_OPTIONAL, _SCALARS, _ITEMS, _LEN}
        mine, yours = set(ours.get(_OPTIONAL, [])), set(theirs.get(_OPTIONAL, []))
        for k in sorted((mine ^ yours) & both):
            where = f"{path}.{k}".lstrip(".")
            yield Difference(where, _presence(k in mine), _presence(k in yours))
        for k in sorted((ours.keys() | theirs.keys()) - {_OPTIONAL}):
            where = f"{path}.{k}".lstrip(".") if k != _ITEMS else f"{path}[]"
            if k not in theirs or k not in ours:
                yield Difference(where, _brief(ours.get(k)), _brief(theirs.get(k)))
            else:
                yield from _walk(ours[k], theirs[k], where)
    elif ours != theirs:
        yield Difference(path, _brief(ours), _brief(theirs))


def _brief(value: Any) -> str:
    if value is None:
        return "absent"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def _presence(optional: bool) -> str:
    return "in some items" if optional else "in every item"
