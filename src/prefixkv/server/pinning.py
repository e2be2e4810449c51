"""``POST /v1/cache/pin`` and ``POST /v1/cache/unpin``: keep a prompt's prefix resident.

A pin body is a chat (``messages``) or completions (``prompt``) body plus ``ttl_seconds``;
the prompt is first run like any request of one token (queue, limits and tenant included,
which caches its full blocks), then those blocks are pinned in the caller's namespace (its
tenant and ``cache_salt``) for the TTL. The limits are the cache's
(:mod:`prefixkv.cache.pins`): a pin that would take the tenant over its share, or all pins
over half the pool, is refused with a 409 saying which and by how much; the prompt stays
cached as any other, unpinned. ``unpin`` takes the ``id`` a pin returned; a tenant can only
end its own pins.
"""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request as HTTPRequest

from prefixkv.cache.pins import PinRefused
from prefixkv.server.body import read_json_object
from prefixkv.server.errors import APIError
from prefixkv.server.generation import CHAT, TEXT, Generation

MAX_TTL_SECONDS = 7 * 24 * 3600
"""The longest pin: one forgotten by its client ends within a week."""
UNPIN_BODY_BYTES = 4096


def ttl_of(body: dict[str, Any]) -> float:
    """``ttl_seconds``: a number in (0, MAX_TTL_SECONDS]; a 400 naming it otherwise."""
    ttl = body.get("ttl_seconds")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise APIError.invalid("ttl_seconds is required: a number of seconds", "ttl_seconds")
    if not (0 < ttl <= MAX_TTL_SECONDS) or not math.isfinite(ttl):
        raise APIError.invalid(
            f"ttl_seconds must be > 0 and at most {MAX_TTL_SECONDS}, got {ttl}", "ttl_seconds"
        )
    return float(ttl)


async def pin(http: HTTPRequest, generation: Generation, tenant: str) -> dict[str, Any]:
    body = await read_json_object(http, generation.settings.max_body_bytes)
    ttl = ttl_of(body)
    endpoint = CHAT if "messages" in body else TEXT
    one_token = {**body, "max_tokens": 1, "n": 1, "stream": False}
    for name in (
        "max_completion_tokens",
        "stop",
        "logprobs",
        "top_logprobs",
        "best_of",
        "prompt_logprobs",
    ):
        one_token.pop(name, None)
    parsed = endpoint.parse(one_token, generation.settings)
    request, completion = await generation.prefill(http, parsed, tenant, endpoint)
    try:
        held = generation.engine.cache.pin_prefix(request.ids, request.namespace, ttl)
    except PinRefused as exc:
        raise APIError(409, str(exc), code=exc.code) from exc
    return {
        "id": held.id,
        "object": "cache.pin",
        "pinned_tokens": held.tokens,
        "pinned_blocks": held.blocks,
        "prompt_tokens": completion.prompt_tokens,
        "cached_tokens": completion.cached_tokens,
        "ttl_seconds": ttl,
    }


async def unpin(http: HTTPRequest, generation: Generation, tenant: str) -> dict[str, Any]:
    body = await read_json_object(http, UNPIN_BODY_BYTES)
    pin_id = body.get("id")
    if not isinstance(pin_id, str) or not pin_id:
        raise APIError.invalid("id is required: the id a pin returned", "id")
    held = generation.engine.cache.unpin_prefix(pin_id, tenant)
    if held is None:
        raise APIError(
            404, "no such pin (expired, unpinned, or another key's)", param="id",
            code="pin_not_found",
        )  # fmt: skip
    return {"id": pin_id, "object": "cache.unpin", "unpinned_blocks": held.blocks}
