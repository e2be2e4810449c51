"""The request log's lines as records (see :mod:`prefixkv.server.request_log` for the
writer and what each field means)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME_BYTES = 16
"""A block name: 128 bits (:mod:`prefixkv.tiers.naming`)."""


class LogError(ValueError):
    """A line that is not a request log record; the message names the line and field."""


@dataclass(frozen=True)
class LoggedRequest:
    """One finished request as the replay needs it."""

    blocks: tuple[bytes, ...]
    """Names of the prompt's full blocks."""
    output_blocks: tuple[bytes, ...]
    """Names of the further full blocks the request cached while generating."""
    prompt_tokens: int
    cached_tokens: int | None
    """What the server served from its cache (None when the request had no completion)."""
    output_tokens: int
    ttft: float | None
    block_size: int
    block_bytes: int
    time: float | None = None
    """Unix time the request finished (None in a line without one)."""
    naming: str | None = None
    """How the server named the blocks: ``model`` (recomputable from the model's name,
    :class:`prefixkv.server.request_log.ModelNamer`), ``tiers`` (the tiers' names, keyed),
    None in a log written before the field."""

    @property
    def lookup_blocks(self) -> int:
        """Blocks the server looks up: the full blocks of the prompt but its last token,
        whose logits are always computed (``engine/batch/sequence.py``)."""
        return max(self.prompt_tokens - 1, 0) // self.block_size

    @property
    def held_blocks(self) -> int:
        """Blocks the running request holds at its end: every token it fed (the prompt and
        all generated tokens but the last), the partial last block included."""
        fed = self.prompt_tokens + max(self.output_tokens - 1, 0)
        return -(-fed // self.block_size)


def read_log(path: Path) -> Iterator[LoggedRequest]:
    """The records of ``path`` in file order; LogError naming the line for a bad one, and
    for a log whose lines disagree on the block size (two servers' logs mixed)."""
    size = None
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = parse_line(json.loads(line))
            except (json.JSONDecodeError, LogError) as exc:
                raise LogError(f"{path}:{number}: {exc}") from None
            if size is not None and record.block_size != size:
                raise LogError(
                    f"{path}:{number}: block_size {record.block_size}, earlier lines {size}"
                    " (one server's log at a time)"
                )
            size = record.block_size
            yield record


def parse_line(data: Any) -> LoggedRequest:
    """One line's JSON object as a record; LogError naming the first bad field."""
    if not isinstance(data, dict):
        raise LogError("a line is a JSON object")
    return LoggedRequest(
        blocks=_names(data, "blocks"),
        output_blocks=_names(data, "output_blocks"),
        prompt_tokens=_count(data, "prompt_tokens"),
        cached_tokens=_count(data, "cached_tokens")
        if data.get("cached_tokens") is not None
        else None,
        output_tokens=_count(data, "output_tokens") if data.get("output_tokens") is not None else 0,
        ttft=_seconds(data, "ttft"),
        block_size=_count(data, "block_size", least=1),
        block_bytes=_count(data, "block_bytes", least=1),
        time=_seconds(data, "time"),
        naming=_naming(data),
    )


def _names(data: dict[str, Any], field: str) -> tuple[bytes, ...]:
    values = data.get(field)
    if not isinstance(values, list):
        raise LogError(f"{field} must be a list of block names")
    try:
        names = tuple(bytes.fromhex(value) for value in values)
    except (TypeError, ValueError):
        raise LogError(f"{field} holds a value that is not a hex block name") from None
    if any(len(name) != NAME_BYTES for name in names):
        raise LogError(f"{field} holds a name that is not {NAME_BYTES} bytes")
    return names


def _count(data: dict[str, Any], field: str, least: int = 0) -> int:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise LogError(f"{field} must be an integer >= {least}, got {value!r}")
    return value


def _seconds(data: dict[str, Any], field: str) -> float | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise LogError(f"{field} must be a number >= 0 or null, got {value!r}")
    return float(value)


def _naming(data: dict[str, Any]) -> str | None:
    value = data.get("naming")
    if value is not None and value not in ("model", "tiers"):
        raise LogError(f"naming must be 'model' or 'tiers', got {value!r}")
    return None if value is None else str(value)
