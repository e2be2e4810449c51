"""The live dashboard: a plain page (``GET /dashboard``, its script and style sheet) that polls
``GET /v1/dashboard`` every second and draws the :class:`~prefixkv.server.history.History`.

The page and its two files hold no figures, so they are served to anyone the Host check lets
through, like ``/health``; the figures come only from ``/v1/dashboard``, which authenticates
as ``/v1/cache/stats`` does. The page asks for the key (or reads it from the URL's
``#key=...`` fragment, which a browser never sends to a server) and keeps it in the tab's
session storage. Nothing is fetched from anywhere else: the Content-Security-Policy forbids
it, so a copy of the page that someone altered could not send the key away either.

Scopes, as for stats: the admin, or anyone on a keyless server bound to loopback (where
``/metrics`` is public too), sees the whole server and every tenant; a tenant sees its own
cache figures only (no pool-wide occupancy, no other tenant, no batch or tier figures).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.responses import Response

from prefixkv.cache.protocol import BlockStore
from prefixkv.server.errors import APIError
from prefixkv.server.history import History, Point
from prefixkv.server.metrics import tier_records

_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_POOL_WIDE = frozenset({"free_blocks", "reserved_blocks", "total_blocks", "capacity_bytes"})


def asset(name: str) -> Response:
    """The page (``index.html``) or one of its files; 404 for any other name."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise APIError(404, f"no dashboard file {name!r}", code="not_found")
    body = (resources.files("prefixkv.server") / "static" / name).read_bytes()
    return Response(body, media_type=media_type, headers=_HEADERS)


def whole_view(
    history: History, cache: BlockStore, interval: float, since: float
) -> dict[str, Any]:
    """The admin's data: every point after ``since`` in full, and the totals now."""
    stats = cache.stats()
    tenants = []
    for tenant in history.sources.tenants:
        own = cache.tenant_stats(tenant)
        tenants.append(
            {
                "tenant": tenant,
                "used_blocks": own.used_blocks,
                "pool_share": own.used_blocks / stats.total_blocks if stats.total_blocks else 0.0,
                "hit_rate": own.hit_rate,
                "query_tokens": own.query_tokens,
                "hit_tokens": own.hit_tokens,
            }
        )
    return {
        "scope": "all",
        "interval": interval,
        "points": [_whole_point(p) for p in history.since(since)],
        "now": {**stats._asdict(), "hit_rate": stats.hit_rate},
        "tenants": tenants,
        "tiers": tier_records(cache),
    }


def tenant_view(
    history: History, cache: BlockStore, interval: float, tenant: str, since: float
) -> dict[str, Any]:
    """A tenant's data: its own cache figures only."""
    stats = cache.tenant_stats(tenant)
    own = {k: v for k, v in stats._asdict().items() if k not in _POOL_WIDE}
    return {
        "scope": "tenant",
        "interval": interval,
        "points": [{"t": p.t, **p.tenants.get(tenant, {})} for p in history.since(since)],
        "now": {**own, "hit_rate": stats.hit_rate},
    }


def _whole_point(point: Point) -> dict[str, Any]:
    return {"t": point.t, **point.server, "tenants": point.tenants}
