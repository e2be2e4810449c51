"""ServerSettings: what the HTTP layer enforces, independent of the model and the cache."""

from __future__ import annotations

from dataclasses import dataclass

from prefixkv.server.hosts import LOOPBACK_NAMES

MIB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """Limits and identity of one server. The engine (model + cache) is configured apart.

    ``model_names``: the ids a request's ``model`` may name; the first is the one listed by
    ``/v1/models`` and echoed in responses. ``api_keys``: one tenant each; ``admin_keys``:
    callers who may act on the whole cache. No keys at all means no authentication: every
    caller is the anonymous tenant, never the admin. ``public_metrics``: ``/metrics`` answers
    callers without the admin key; only for a server without keys (``prefixkv serve`` sets it
    when bound to loopback; see :mod:`prefixkv.server.auth`).
    """

    model_names: tuple[str, ...]
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    """Host header names the server answers to (see :mod:`prefixkv.server.hosts`)."""
    max_body_bytes: int = MIB
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    max_queue: int = 1024
    max_cache_salt_chars: int = 256
    public_metrics: bool = False
    sample_seconds: float = 1.0
    """How often the dashboard's history reads the server's figures."""

    def __post_init__(self) -> None:
        if not self.model_names or not all(self.model_names):
            raise ValueError("ServerSettings needs at least one non-empty model name")
        for key in self.api_keys + self.admin_keys:
            if not key or key != key.strip():
                raise ValueError("a key must not be empty or start or end with blanks")
        if set(self.api_keys) & set(self.admin_keys):
            raise ValueError("a key cannot be both an API key and the admin key")
        if self.public_metrics and self.keyed:
            raise ValueError(
                "public_metrics is for a server without keys: with keys, /metrics needs the admin key"
            )
        if not self.sample_seconds > 0:
            raise ValueError(f"sample_seconds must be > 0, got {self.sample_seconds}")
        for name in ("max_body_bytes", "default_max_tokens", "max_tokens_limit", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def keyed(self) -> bool:
        """True when callers must authenticate."""
        return bool(self.api_keys or self.admin_keys)

    @property
    def model(self) -> str:
        """The served model id."""
        return self.model_names[0]
