"""Markers, and the guard that keeps unmarked tests from starting processes.

Markers (declared in pyproject.toml):

- ``process``: the test starts a subprocess, itself or through a fixture (a server, a CLI run).
- ``smollm2``: the test loads the real SmolLM2 model.
- ``serial``: the test times something (a deadline, a timeout, an order of arrival) that a
  neighbour on the other core could push past its bound, so ``make test`` runs it in the slow
  tests' one-at-a-time run, not in their ``-n 2`` run (test_connections' trickle test missed
  its bound under ``-n 2``). Mark together the tests that share a module's server fixture:
  split between the two runs, it would start twice (mark them one by one where the module
  also holds fast tests, which the mark would make slow).

All three imply ``slow``, added here at collection, so ``pytest -m "not slow"`` deselects
them; ``-m "slow and not serial"`` and ``-m "slow and serial"`` then split the rest in two.

The guard: while a test that is not marked ``process`` is being set up, run or torn down,
starting a process (``subprocess.Popen`` and everything built on it, a ``multiprocessing``
process, ``os.system``, ``os.fork``, ``os.posix_spawn``) fails it with "this test starts a
process: mark it @pytest.mark.process". What counts is the test whose setup or teardown is
running, so a session- or module-scoped fixture that starts a server is judged by the test
that first requests it; tests that later run without it are not affected. A test that
requests such a fixture after it was started (and so finds the server already running) still
depends on a process: it fails too, unless marked (fixtures it names; not ones fetched with
``request.getfixturevalue``). When the unmarked test that first requested a shared fixture
fails this way, pytest keeps that error for the fixture's scope, so later tests using it
report the same message, naming the culprit.

How: a session-scoped autouse fixture installs the patches (autouse fixtures come first
within their scope, so before any other session fixture; a function-scoped one would come
after them and miss their setup); hooks around each test and each fixture setup record which
test is current and which fixture is starting.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import platform
import subprocess
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

# pytester: tests/test_markers.py runs the guard in inner sessions; redis_fixtures: a real
# redis-server for the Redis tier (tests/tiers, tests/server).
pytest_plugins = ["pytester", "tests.redis_fixtures"]

PROCESS_MESSAGE = "this test starts a process: mark it @pytest.mark.process"

# The openai client reports the platform, and platform.processor() runs `uname -p` once per
# process (then caches it): asked here, before the guard is on, it is no test's process.
platform.processor()


def _build_native_kernel() -> None:
    """Compile the native kernels, attention and linear, and the prefix index's native
    descent (a build step, like installing a
    package), before the guard is on: later loads in this process reuse the library, and
    :func:`prefixkv.kernels.build.identity` the compiler's answers (both are cached)."""
    from prefixkv.index.native import native_descent
    from prefixkv.kernels.build import NativeUnavailable
    from prefixkv.kernels.ops import load

    with contextlib.suppress(NativeUnavailable):  # tests needing it say why; "auto" falls back
        load()
    with contextlib.suppress(NativeUnavailable):  # (the prefix index's, as the kernels)
        native_descent()


_build_native_kernel()


def _build_font_cache() -> None:
    """Build matplotlib's font cache now if the chart extra is installed: on a machine where
    matplotlib has never run, its first import asks ``fc-list`` (a subprocess) for the
    system's fonts and writes the cache under the user's cache directory. That is a
    first-run install step of a library, like the kernel build above, not something a chart
    test does; done here, before the guard is on, it runs once per fresh home directory
    (``.ci/run`` gives every CI run a fresh one, so this path runs on every run)."""
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.font_manager  # builds the cache when it is missing


_build_font_cache()


_tests: list[pytest.Item] = []  # the test being set up, run or torn down
_fixtures: list[pytest.FixtureDef[Any]] = []  # fixtures being set up, innermost last
_process_fixtures: dict[pytest.FixtureDef[Any], str] = {}  # fixture -> test it started for


def _marked(item: pytest.Item) -> bool:
    return item.get_closest_marker("process") is not None


IMPLY_SLOW = ("process", "smollm2", "serial")


@pytest.hookimpl(tryfirst=True)  # before the mark plugin deselects by -m
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) is not None for name in IMPLY_SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _tests.append(item)
    try:
        return (yield)
    finally:
        _tests.pop()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Generator[None, object, object]:
    _fixtures.append(fixturedef)
    try:
        return (yield)
    finally:
        _fixtures.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    yield
    if _marked(item):
        return
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in getattr(info, "name2fixturedefs", {}).items():
        if defs and defs[-1] in _process_fixtures:
            pytest.fail(
                f"{PROCESS_MESSAGE} ({item.nodeid} uses fixture {name!r}, which started a"
                f" process for {_process_fixtures[defs[-1]]})",
                pytrace=False,
            )


def _check_process_start(what: str) -> None:
    if not _tests:
        return  # collection or session start: no test to judge
    item = _tests[-1]
    fixture = _fixtures[-1] if _fixtures else None
    if fixture is not None:
        _process_fixtures.setdefault(fixture, item.nodeid)
    if not _marked(item):
        where = f" in fixture {fixture.argname!r}" if fixture is not None else ""
        pytest.fail(f"{PROCESS_MESSAGE} ({item.nodeid} called {what}{where})")


def _guarded(name: str, original: Callable[..., Any], shown_arg: int | None = None) -> Any:
    """``original``, checked first; the call is named with its argument ``shown_arg``."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        shown = ""
        if shown_arg is not None:
            shown = repr(args[shown_arg] if len(args) > shown_arg else kwargs.get("args"))
        _check_process_start(f"{name}({shown})")
        return original(*args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    return guarded


@pytest.fixture(scope="session", autouse=True)
def _no_unmarked_processes() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        init = subprocess.Popen.__init__
        patch.setattr(subprocess.Popen, "__init__", _guarded("subprocess.Popen", init, 1))
        start = multiprocessing.process.BaseProcess.start
        patch.setattr(
            multiprocessing.process.BaseProcess, "start", _guarded("Process.start", start)
        )
        for name in ("system", "fork", "forkpty", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                patch.setattr(os, name, _guarded(f"os.{name}", getattr(os, name), 0))
        yield
