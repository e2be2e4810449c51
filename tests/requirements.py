"""What a test needs from the machine (a server binary, a browser, an engine): where it is
missing the test skips, saying why, unless its ``PREFIXKV_REQUIRE_*`` switch is ``1`` (set by
``.ci/run``), where it fails instead, so that CI cannot pass without it."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(switch: str, why: str) -> NoReturn:
    """Skip the running test with ``why``; fail it when the environment sets ``switch=1``."""
    if os.environ.get(switch) == "1":
        pytest.fail(f"{why} ({switch}=1: it must run here)", pytrace=False)
    pytest.skip(why)
