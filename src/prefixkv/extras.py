"""Optional dependencies by layer, and the one-line error when a layer's extra is missing.

The core (``prefixkv.index``, ``prefixkv.cache``) needs NumPy and PyTorch only. Each layer
above it lives behind an extra: ``[hf]`` for the engine (transformers and GGUF loading),
``[tiers]`` for the disk and Redis tiers, ``[server]`` for the HTTP server, ``[bench]`` for the benchmarks,
``[grammar]`` for structured outputs.
"""

from __future__ import annotations

import importlib.util

EXTRAS = {
    "hf": ("transformers", "gguf", "accelerate", "safetensors"),
    "tiers": ("xxhash", "redis", "cryptography"),
    "server": ("fastapi", "uvicorn", "prometheus_client"),
    "bench": ("openai", "httpx", "matplotlib"),
    "grammar": ("llguidance",),
}


class MissingExtraError(ImportError):
    """A layer was used without its extra installed; the message is the pip command."""


def require(extra: str, layer: str) -> None:
    """Raise MissingExtraError (one line naming ``extra``) unless every module of ``extra``
    is importable. Checks only that the modules exist: O(modules), imports nothing."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{layer} needs the [{extra}] extra: pip install 'prefixkv[{extra}]' "
            f"(missing: {', '.join(missing)})"
        )
