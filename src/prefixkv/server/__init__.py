"""The OpenAI-compatible HTTP server (``prefixkv serve``) over a prefix-cached Engine.

``create_app(engine, settings)`` builds the FastAPI app; ``serve(app, host, port)`` runs it
under uvicorn until SIGINT/SIGTERM.
"""

from __future__ import annotations

from prefixkv.server.app import create_app
from prefixkv.server.run import serve
from prefixkv.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
