"""Shared servers: one tiny-model server for the fast matrix (session-wide: starting a server
costs seconds), each stopped with SIGTERM at the end and required to exit cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..engine.tiny import tiny_llama, tiny_tokenizer
from .harness import ServerProcess

TINY_ARGS = ["--cache-bytes", "64MiB", "--block-size", "4", "--threads", "1"]
TINY_CONTEXT = 4096


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a char tokenizer and a ChatML template, saved as a folder.
    Its context is widened to 4096 so that a long stream lasts long enough to interrupt."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    model = tiny_llama()
    model.config.max_position_embeddings = TINY_CONTEXT
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "tiny-server.log"
    args = ["--model", str(tiny_model_dir), *TINY_ARGS, "--max-tokens-limit", "3000"]
    server = ServerProcess(args, log).wait_ready()
    yield server
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output(), server.output()
