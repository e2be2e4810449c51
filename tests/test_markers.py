"""The markers and the process guard of tests/conftest.py.

Inner pytest sessions (pytester, in this process) run tests/conftest.py itself over small test
files. An inner test that really starts a process also starts it for the test running it, so
those outer tests are marked ``process`` too: the guard of this session checks them."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
MESSAGE = "this test starts a process: mark it @pytest.mark.process"


@pytest.fixture
def inner(pytester: pytest.Pytester, request: pytest.FixtureRequest) -> pytest.Pytester:
    """A pytester folder with tests/conftest.py and this project's markers."""
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    markers = "\n".join(f"    {line}" for line in request.config.getini("markers"))
    # Inner sessions need neither plugin: unraisableexception ends each with a gc.collect() over
    # every object of this process (torch included), hypothesis's summary imports hypothesis.
    plain = "-p no:unraisableexception -p no:hypothesispytest -p no:cacheprovider"
    pytester.makeini(f"[pytest]\naddopts = --strict-markers {plain}\nmarkers =\n{markers}\n")
    return pytester


def test_process_smollm2_and_serial_imply_slow(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        def test_plain(): pass

        @pytest.mark.process
        def test_process(): pass

        @pytest.mark.smollm2
        def test_smollm2(): pass

        @pytest.mark.process
        class TestInAClass:
            def test_inherits(self): pass

        @pytest.mark.serial
        def test_serial(): pass
        """
    )
    fast = inner.runpytest("-m", "not slow", "--collect-only", "-q")
    fast.stdout.fnmatch_lines(["*::test_plain", "1/5 tests collected (4 deselected)*"])
    slow = inner.runpytest("-m", "slow", "--collect-only", "-q")
    slow.stdout.fnmatch_lines(
        ["*::test_process", "*::test_smollm2", "*::test_inherits", "*::test_serial"]
    )
    slow.stdout.no_fnmatch_line("*::test_plain")
    # make test's two slow runs: together every slow test once
    parallel = inner.runpytest("-m", "slow and not serial", "--collect-only", "-q")
    parallel.stdout.fnmatch_lines(["3/5 tests collected (2 deselected)*"])
    parallel.stdout.no_fnmatch_line("*::test_serial")
    alone = inner.runpytest("-m", "slow and serial", "--collect-only", "-q")
    alone.stdout.fnmatch_lines(["*::test_serial", "1/5 tests collected (4 deselected)*"])


def test_unmarked_tests_cannot_start_processes(inner: pytest.Pytester) -> None:
    """Every way tried fails the test before any process exists, even one whose code
    swallows exceptions."""
    inner.makepyfile(
        test_guard="""
        import multiprocessing, os, subprocess, sys

        RAN = [sys.executable, "-c", "open('ran', 'w').close()"]

        def test_popen():
            subprocess.Popen(RAN)

        def test_run():
            subprocess.run(RAN, check=True)

        def test_check_output():
            subprocess.check_output(RAN)

        def test_os_system():
            os.system("touch ran")

        def test_multiprocessing():
            multiprocessing.get_context("spawn").Process(target=print).start()

        def test_swallowed():
            try:
                subprocess.Popen(RAN)
            except Exception:
                pass
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=6)
    result.stdout.fnmatch_lines(
        [
            f"*{MESSAGE} (test_guard.py::test_popen called subprocess.Popen([[]*",
            f"*{MESSAGE} (test_guard.py::test_os_system called os.system('touch ran'))",
            f"*{MESSAGE} (test_guard.py::test_multiprocessing called Process.start())",
        ]
    )
    assert not (inner.path / "ran").exists()


def test_a_fixture_started_by_an_unmarked_test_fails_it(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_fixture="""
        import subprocess, sys
        import pytest

        @pytest.fixture(scope="session")
        def server():
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            yield proc
            proc.kill()

        def test_uses_server(server):
            pass
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{MESSAGE} (test_fixture.py::test_uses_server called*"])
    result.stdout.fnmatch_lines(["*in fixture 'server')*"])


@pytest.mark.process
def test_marked_tests_may_start_processes_and_share_them(inner: pytest.Pytester) -> None:
    """A session fixture started by a marked test: later unmarked tests that do not use it
    pass (its teardown runs in the last, unmarked, test); one that uses it fails; a marked
    one that uses it passes."""
    inner.makepyfile(
        test_shared="""
        import subprocess, sys
        import pytest

        @pytest.fixture(scope="session")
        def server():
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            yield proc
            proc.kill()
            proc.wait()

        @pytest.mark.process
        def test_1_starts_it(server):
            assert server.poll() is None
            subprocess.run([sys.executable, "-c", "pass"], check=True)

        def test_2_unmarked_without_it():
            pass

        def test_3_unmarked_with_it(server):
            pass

        @pytest.mark.process
        def test_4_marked_with_it(server):
            assert server.poll() is None

        def test_5_unmarked_last():
            pass
        """
    )
    result = inner.runpytest("-v")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_3_unmarked_with_it ERROR*",
            f"*{MESSAGE} (test_shared.py::test_3_unmarked_with_it uses fixture 'server',"
            " which started a process for test_shared.py::test_1_starts_it)",
        ]
    )


def test_this_session_refuses_unmarked_processes() -> None:
    """The guard is live here, not only in inner sessions."""
    with pytest.raises(pytest.fail.Exception, match=MESSAGE):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(pytest.fail.Exception, match=MESSAGE):
        multiprocessing.get_context("spawn").Process(target=print).start()
    with pytest.raises(pytest.fail.Exception, match=MESSAGE):
        os.system("true")


@pytest.mark.process
def test_this_session_lets_marked_tests_start_processes() -> None:
    done = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True)
    assert done.stdout == "ok\n"


def test_every_process_smollm2_or_serial_test_here_is_slow(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    assert request.node in items
    for item in items:
        if any(item.get_closest_marker(name) for name in ("process", "smollm2", "serial")):
            assert item.get_closest_marker("slow"), item.nodeid
