"""The dashboard in a real headless Chromium (the OS package, driven by Selenium through the
OS's chromedriver) against a real ``prefixkv serve`` on the tiny model, under load from
another thread: the page asks for a key, takes the admin's from the URL fragment, renders
every panel, its numbers move while requests run, and it makes no request anywhere else.
A screenshot is saved (``$PREFIXKV_SCREENSHOT_DIR``, else the test's temporary folder).

CI (``.ci/run``) installs ``chromium`` and ``chromium-driver`` and sets
``PREFIXKV_REQUIRE_BROWSER=1``, so a missing browser fails there instead of skipping."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..requirements import missing
from .conftest import TINY_ARGS
from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]

API_KEY = "key-of-the-harbour"
ADMIN_KEY = "key-of-the-harbour-master"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        why = "needs the chromium and chromium-driver packages (apt-get install ...)"
        missing("PREFIXKV_REQUIRE_BROWSER", why)
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1100"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def keyed_server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    args = ["--model", str(tiny_model_dir), *TINY_ARGS, "--max-tokens-limit", "3000"]
    env = {"PREFIXKV_API_KEY": API_KEY, "PREFIXKV_ADMIN_KEY": ADMIN_KEY}
    server = ServerProcess(args, tmp_path / "server.log", env=env, api_key=API_KEY)
    server.wait_ready()
    try:
        yield server
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.output()


def load(server: ServerProcess, stop: threading.Event) -> None:
    """Requests one after another, about three documents, until ``stop``."""
    client = server.client(API_KEY)
    documents = [f"Harbour log {n}: " + "tides, ships and gulls. " * 12 for n in range(3)]
    turn = 0
    while not stop.is_set():
        client.chat.completions.create(
            model="tiny",
            messages=[
                {"role": "system", "content": documents[turn % 3]},
                {"role": "user", "content": f"Question {turn}?"},
            ],
            max_tokens=24,
            temperature=0,
        )
        turn += 1


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def tile(driver: Any, label: str) -> str:
    """A tile's figure, read in one script call: the page rebuilds its tiles every second, so
    an element found first and read after may be gone (a stale reference)."""
    script = "const b = document.querySelector(arguments[0]); return b ? b.textContent : '-1';"
    text: str = driver.execute_script(script, f'[data-tile="{label}"] b')
    return text


def number(text: str) -> float:
    return float(text.replace(",", "").rstrip("%"))


def test_dashboard_renders_and_moves_under_load(
    browser: Any, keyed_server: ServerProcess, tmp_path: Path
) -> None:
    url = keyed_server.url + "/dashboard"
    browser.get(url)
    login = browser.find_element("id", "login")
    wait_for(login.is_displayed, 10, "the key form (no key yet: the data answers 401)")

    browser.get(url + "#key=" + ADMIN_KEY)
    browser.refresh()  # a fragment change alone does not reload the page
    wait_for(lambda: "whole server" in browser.find_element("id", "scope").text, 15, "data")
    assert "#key" not in browser.current_url  # taken out of the address bar at once

    stop = threading.Event()
    worker = threading.Thread(target=load, args=(keyed_server, stop), daemon=True)
    worker.start()
    try:
        wait_for(lambda: number(tile(browser, "prompt tokens")) > 0, 30, "prompt tokens")
        before = number(tile(browser, "prompt tokens"))
        wait_for(lambda: number(tile(browser, "prompt tokens")) > before, 30, "them to grow")
        wait_for(lambda: number(tile(browser, "cached tokens")) > 0, 30, "cached tokens")
        lines = "figure[data-chart={}] polyline"
        for chart in ("tokens", "pool", "decode", "ttft"):
            wait_for(
                lambda chart=chart: bool(
                    browser.find_elements("css selector", lines.format(chart))
                ),
                30,
                f"the {chart} chart's lines",
            )
    finally:
        stop.set()
        worker.join(60)
    rows = browser.find_elements("css selector", "#tenants tr")
    assert len(rows) == 3  # a header, the API key's tenant, the admin's
    folder = Path(os.environ.get("PREFIXKV_SCREENSHOT_DIR", str(tmp_path)))
    folder.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(folder / "dashboard.png"))
    assert (folder / "dashboard.png").stat().st_size > 10_000

    # Nothing fetched from anywhere but the server, and no script error.
    messages = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    urls = [
        m["params"]["request"]["url"]
        for m in messages
        if m["method"] == "Network.requestWillBeSent"
    ]
    assert urls and [u for u in urls if not u.startswith(keyed_server.url + "/")] == []
    assert any(u.startswith(keyed_server.url + "/v1/dashboard?since=") for u in urls)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert [e for e in errors if "401" not in e["message"]] == []  # the first, keyless poll
