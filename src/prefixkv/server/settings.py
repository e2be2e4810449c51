"""ServerSettings: what the HTTP layer enforces, independent of the model and the cache."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """Limits and identity of one server. The engine (model + cache) is configured apart.

    ``model_names``: the ids a request's ``model`` may name; the first is the one listed by
    ``/v1/models`` and echoed in responses. ``api_keys``: empty means no authentication.
    """

    model_names: tuple[str, ...]
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = MIB
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    max_queue: int = 1024
    max_cache_salt_chars: int = 256

    def __post_init__(self) -> None:
        if not self.model_names or not all(self.model_names):
            raise ValueError("ServerSettings needs at least one non-empty model name")
        if any(not key for key in self.api_keys):
            raise ValueError("an API key must not be empty")
        for name in ("max_body_bytes", "default_max_tokens", "max_tokens_limit", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def model(self) -> str:
        """The served model id."""
        return self.model_names[0]
