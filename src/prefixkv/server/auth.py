"""Bearer-token authentication, and the tenant it identifies.

A tenant is a short digest of the API key used, so the key itself never becomes part of a
cache namespace, a log line or a metric label. Without configured keys every request belongs
to the one anonymous tenant ``""``.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from prefixkv.server.errors import APIError

ANONYMOUS = ""


def tenant_of(key: str) -> str:
    """The tenant id of an API key: 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Authenticator:
    """A FastAPI dependency: returns the caller's tenant id or raises a 401 APIError."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple((key.encode(), tenant_of(key)) for key in keys)

    def __call__(self, request: Request) -> str:
        if not self._keys:
            return ANONYMOUS
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "missing API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
        tenant = self.tenant(token.strip())
        if tenant is None:
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")
        return tenant

    def tenant(self, token: str) -> str | None:
        """The tenant whose key is ``token``, comparing against every key in constant time."""
        given = token.encode()
        found = None
        for key, tenant in self._keys:
            if hmac.compare_digest(given, key):
                found = tenant
        return found
