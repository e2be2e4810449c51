"""The OpenAI-compatible HTTP server (``prefixkv serve``) over a prefix-cached Engine.

``create_app(engine, settings)`` builds the FastAPI app; ``serve(app, host, port)`` runs it
under uvicorn until SIGINT/SIGTERM.
"""

from __future__ import annotations

from prefixkv.extras import require

require("server", "prefixkv serve")

from prefixkv.server.app import create_app  # noqa: E402  (after the check naming the extra)
from prefixkv.server.run import serve  # noqa: E402
from prefixkv.server.settings import ServerSettings  # noqa: E402

__all__ = ["ServerSettings", "create_app", "serve"]
