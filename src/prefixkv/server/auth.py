"""Bearer-token authentication: who is calling (a tenant), and whether they are the admin.

A tenant is a short digest of the API key used, so the key itself never becomes part of a
cache namespace, a log line or a metric label. With keys, every route but ``/health`` needs
one. Without configured keys every request belongs to the one anonymous tenant ``""``; the
anonymous caller is never the admin, whatever it sends.

The admin key (``--admin-key``) is needed for the whole-cache view (``/v1/cache/stats`` of
every tenant, with the pool's free blocks and the tiers; others see their own namespaces) and
a global reset. ``/metrics`` (whole-cache and all-tenant figures too) needs it as well, with
one exception: a server without any key bound to loopback serves it to anyone
(``ServerSettings.public_metrics``). There every caller is a local process that may already
use the whole server, and Prometheus scrapers are usually set up without credentials.
Anywhere else the figures (queue depth, hit rates, other tenants' traffic) are for the
operator only; a scraper sends the admin key (Prometheus: ``authorization:
{credentials_file: ...}`` in its scrape config). A server bound elsewhere without keys
(``--allow-anonymous``) has no admin, so nobody reads its ``/metrics``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import Request

from prefixkv.server.errors import APIError

ANONYMOUS = ""


def tenant_of(key: str) -> str:
    """The tenant id of an API key: 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its tenant (the first part of its cache namespaces) and
    whether it may act on the whole cache."""

    tenant: str
    admin: bool


class Authenticator:
    """A FastAPI dependency: returns the Caller or raises a 401 APIError. Without keys,
    every request is the anonymous caller (tenant ``""``, not the admin), whatever
    ``Authorization`` header it sends: OpenAI clients always send one."""

    def __init__(self, api_keys: tuple[str, ...], admin_keys: tuple[str, ...] = ()) -> None:
        self._keys = tuple((key.encode(), Caller(tenant_of(key), False)) for key in api_keys) + (
            tuple((key.encode(), Caller(tenant_of(key), True)) for key in admin_keys)
        )

    def __call__(self, request: Request) -> Caller:
        if not self._keys:
            return Caller(ANONYMOUS, admin=False)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "missing API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
        caller = self.caller(token.strip())
        if caller is None:
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")
        return caller

    @property
    def tenants(self) -> tuple[str, ...]:
        """Every tenant a caller can be: one per configured key, or the anonymous one."""
        if not self._keys:
            return (ANONYMOUS,)
        return tuple(dict.fromkeys(caller.tenant for _, caller in self._keys))

    def caller(self, token: str) -> Caller | None:
        """The caller whose key is ``token``, comparing against every key in constant time."""
        given = token.encode()
        found = None
        for key, caller in self._keys:
            if hmac.compare_digest(given, key):
                found = caller
        return found


def require_admin(caller: Caller, what: str) -> None:
    """403 unless ``caller`` is the admin."""
    if not caller.admin:
        raise APIError(
            403,
            f"{what} needs the admin key (prefixkv serve --admin-key)",
            code="admin_key_required",
        )
