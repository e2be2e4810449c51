"""Freed heap memory goes back to the system on request (glibc), and the server's trimmer
asks every interval."""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time

import pytest

from prefixkv.bench.soak_sample import resident_bytes
from prefixkv.heap import HeapTrimmer, _malloc_trim, release_free_heap

GLIBC = platform.libc_ver()[0] == "glibc"


def rss_mib() -> float:
    return resident_bytes(os.getpid()) / 2**20


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_freed_heap_pages_go_back_when_asked() -> None:
    """What a worker thread frees stays resident in its arena (only a heap's top is given
    back by free()) until trimmed: 64 MiB of 96 KiB chunks (under glibc's 128 KiB mmap
    threshold, so from the heap), each between two that stay alive. (Small chunks kept alive
    between them were not enough: an arena reused from an earlier thread serves them from
    its free lists, the big chunks lie side by side, and free() gives them back at once.)"""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunk, count = 96 << 10, 683
    alive: list[int] = []
    freed: list[float] = []

    def worker() -> None:
        blocks = []
        for _ in range(2 * count + 1):
            block = libc.malloc(chunk)
            ctypes.memset(block, 1, chunk)  # resident
            blocks.append(block)
        alive.extend(blocks[::2])
        for block in blocks[1::2]:  # count chunks, each between two alive
            libc.free(block)
        freed.append(rss_mib())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert release_free_heap()
    after = rss_mib()
    for block in alive:
        libc.free(block)
    assert freed[0] - after > 48, (freed, after)


class NoTrim:
    """A C library without malloc_trim."""

    def __init__(self, name: object) -> None:
        pass


def test_without_glibc_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    _malloc_trim.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", NoTrim)
    try:
        assert release_free_heap() is False
    finally:
        _malloc_trim.cache_clear()


def test_the_trimmer_trims_every_interval_until_stopped() -> None:
    trimmer = HeapTrimmer(0.02).start()
    time.sleep(0.3)
    trimmer.stop()
    done = trimmer.trims
    assert done >= 3
    time.sleep(0.1)
    assert trimmer.trims == done  # stopped
    trimmer.stop()  # idempotent


@pytest.mark.parametrize("interval", [0, -1, float("nan")])
def test_a_trim_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="trim interval"):
        HeapTrimmer(interval)
