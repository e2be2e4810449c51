"""Fixtures the event tests share with the server tests."""

from tests.server.conftest import tiny_model_dir  # noqa: F401 (a fixture)
