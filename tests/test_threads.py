"""Each thread keeps the torch thread count it claimed, whatever other threads set later."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from prefixkv.threads import compute_on, helper_thread


@pytest.fixture(autouse=True)
def restore_default() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the process-wide default the helpers changed


def test_the_compute_thread_keeps_its_count_after_a_helper_starts() -> None:
    counts: dict[str, int] = {}
    claimed, helped = threading.Event(), threading.Event()

    def compute() -> None:
        compute_on(2)
        claimed.set()
        helped.wait()  # a helper has set 1 since: the default is now 1
        counts["compute"] = torch.get_num_threads()

    def helper() -> None:
        claimed.wait()
        helper_thread()
        counts["helper"] = torch.get_num_threads()
        helped.set()

    threads = [threading.Thread(target=compute), threading.Thread(target=helper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == {"compute": 2, "helper": 1}


def test_a_thread_that_starts_a_helper_keeps_its_count() -> None:
    """The creator claims its count before the helper's claim of one changes the default."""
    counts: dict[str, int] = {}

    def creator() -> None:
        from prefixkv.threads import current_threads

        counts["before"] = current_threads()
        helper = threading.Thread(target=helper_thread)
        helper.start()
        helper.join()
        counts["after"] = torch.get_num_threads()

    torch.set_num_threads(2)  # the default a fresh thread copies
    thread = threading.Thread(target=creator)
    thread.start()
    thread.join()
    assert counts == {"before": 2, "after": 2}
