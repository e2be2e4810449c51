"""The Host header check that stops DNS rebinding.

A web page can make a browser send requests to ``127.0.0.1:8000`` under a hostname the
attacker controls (DNS rebinding); the browser then treats the answers as same-origin. The
Host header still carries the attacker's name, so a server that answers only to the names
it is really reached by cannot be driven that way. Bound to loopback, prefixkv answers to
``localhost``, ``127.0.0.1`` and ``[::1]`` (any port) unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from prefixkv.server.errors import error_body

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; a server elsewhere is reachable by
    other machines."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind: str) -> tuple[str, ...]:
    """What a server bound to ``bind`` answers to: loopback names on loopback, else any
    (``*``: a server on the network is reached under names it cannot know)."""
    return LOOPBACK_NAMES if is_loopback(bind) else ("*",)


def host_name(header: str) -> str:
    """The name part of a Host header value: ``[::1]:80`` -> ``[::1]``, ``a:1`` -> ``a``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: a request whose Host names no allowed host gets an OpenAI-shaped
    400 (``invalid_host``). ``*`` allows every host; ``*.example.com`` a domain's
    subdomains. Lifespan and other non-HTTP scopes pass through."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.names = frozenset(a.lower() for a in allowed if not a.startswith("*."))
        self.suffixes = tuple(a[1:].lower() for a in allowed if a.startswith("*."))

    def allows(self, header: str) -> bool:
        name = host_name(header)
        return self.any or name in self.names or (bool(name) and name.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", ())).get(b"host", b"").decode("latin-1")
        if self.allows(header):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            error_body(
                400,
                "the Host header names a host this server does not answer to",
                param=None,
                code="invalid_host",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
