"""``POST /v1/cache/explain``: why a request would (not) hit the cache now, without running it.

The body is a chat completions body (``messages``) or a completions body (``prompt``),
validated as those endpoints validate it, and tokenized as they tokenize it; the answer is
for the caller's namespace (its tenant and the body's ``cache_salt``), as a request would
see it. Nothing is generated, inserted, pinned, promoted or recorded (the cache's counters
do not move). The reasons are :data:`prefixkv.cache.explain.REASONS`.

What a tenant learns is about its own namespaces only: ``other_namespace`` reports another
of its salts by size, never by name; the admin's answer adds the deepest match under any
other tenant's namespace (``other_tenant``: tenant, salt, blocks).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from starlette.requests import Request as HTTPRequest

from prefixkv.cache.explain import Explanation
from prefixkv.cache.tenants import Namespace
from prefixkv.engine.prompts import Prompt, is_chat
from prefixkv.engine.role import EngineRole
from prefixkv.server.auth import Caller
from prefixkv.server.body import read_json_object
from prefixkv.server.generation import Generation
from prefixkv.server.parse import parse_chat, parse_completion
from prefixkv.server.settings import ServerSettings
from prefixkv.tokens import TOKEN_BYTES, TokenBytes, tokens_from_bytes

TEXT_WINDOW = 32
"""Tokens of text shown on each side of the first differing token."""


async def explain(
    http: HTTPRequest,
    caller: Caller,
    engine: EngineRole,
    generation: Generation,
    settings: ServerSettings,
) -> dict[str, Any]:
    """The answer for the request body; raises APIError/InvalidRequestError (a 400) naming
    the field, as the generation endpoints do."""
    body = await read_json_object(http, settings.max_body_bytes)
    parse = parse_chat if body.get("messages") is not None else parse_completion
    parsed = parse(body, settings)
    namespace = Namespace(caller.tenant, parsed.cache_salt)

    def work() -> dict[str, Any]:
        ids = engine.tokenize(parsed.prompt)
        found = engine.cache.explain(ids, namespace, TEXT_WINDOW * 2)
        return Answer(engine, ids, found).body(parsed.prompt, caller.admin)

    return await generation.prepared(work)


class Answer:
    """One explanation as JSON, its token windows rendered as text."""

    def __init__(self, engine: EngineRole, ids: TokenBytes, found: Explanation) -> None:
        self.engine, self.ids, self.found = engine, tokens_from_bytes(ids), found

    def body(self, prompt: Prompt, admin: bool) -> dict[str, Any]:
        finding = self.found.finding
        out: dict[str, Any] = {
            "object": "cache.explanation",
            "reason": self.found.reason,
            "prompt_tokens": finding.prompt_tokens,
            "hit_tokens": finding.hit_tokens,
            "block_size": finding.block_size,
            "cached_prefix": {"tokens": finding.hit_tokens, "blocks": finding.probe.matched_blocks},
            "miss_tokens": self.found.miss_tokens(),
            "first_difference": self.difference(),
            "diverged_in": None,
            "evicted": None,
            "lower_tier": None,
            "other_namespace": None,
        }
        if finding.reason == "diverged" and is_chat(prompt):
            messages = cast(Sequence[Mapping[str, Any]], prompt)  # is_chat checked it
            out["diverged_in"] = self.message_at(messages, finding.probe.common_tokens)
        if finding.evicted is not None:
            record = finding.evicted
            out["evicted"] = {
                "at": record.at,
                "seconds_ago": round(time.time() - record.at, 3),
                "pressure": record.pressure,
                "own_tenant": record.own_tenant,
            }
        if (below := self.found.lower_tier) is not None:
            tokens = below.blocks * finding.block_size
            out["lower_tier"] = {"tier": below.tier, "blocks": below.blocks, "tokens": tokens}
        if finding.elsewhere_blocks:
            blocks = finding.elsewhere_blocks
            out["other_namespace"] = {"blocks": blocks, "tokens": blocks * finding.block_size}
        if admin:
            out["other_tenant"] = self.other_tenant()
        return out

    def difference(self) -> dict[str, Any] | None:
        """Where the prompt first differs from the nearest cached tokens, with text on both
        sides; None when every prompt token equals a cached one."""
        probe, size = self.found.finding.probe, self.found.finding.block_size
        at = probe.common_tokens
        if at >= len(self.ids):
            return None
        cached = tokens_from_bytes(probe.cached_next)
        offset = at - probe.matched_blocks * size  # cached_next starts at the matched end
        return {
            "token": at,
            "prompt": {
                "before": self.text(self.ids[max(0, at - TEXT_WINDOW) : at]),
                "after": self.text(self.ids[at : at + TEXT_WINDOW]),
            },
            "cache": {"after": self.text(cached[offset : offset + TEXT_WINDOW])},
        }

    def message_at(self, messages: Sequence[Mapping[str, Any]], token: int) -> dict[str, Any]:
        """Which message the token at ``token`` was rendered from: the first whose
        rendering (the messages up to it, no assistant opening) is longer than ``token``."""
        for i, message in enumerate(messages):
            rendered = self.engine.tokenize(messages[: i + 1], add_generation_prompt=False)
            if len(rendered) // TOKEN_BYTES > token:
                role = message.get("role")
                return {"message": i, "role": role, "earlier_turn": i < len(messages) - 1}
        return {"message": None, "role": None, "earlier_turn": False}  # the assistant opening

    def other_tenant(self) -> dict[str, Any] | None:
        other = self.found.other_tenant
        if other is None:
            return None
        space = other.namespace
        tenant, salt = (space.tenant, space.salt) if isinstance(space, Namespace) else (None, None)
        return {"tenant": tenant, "salt": salt, "blocks": other.blocks}

    def text(self, ids: list[int]) -> str:
        return self.engine.detokenize(ids) if ids else ""
