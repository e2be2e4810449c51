"""DiskTier against a reference model (an LRU dict), restarts included; faults: a writer
killed with SIGKILL mid-write, a full disk."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.record import encode
from prefixkv.tiers.seal import ChecksumSeal
from tests.tmpfs import tmpfs

NAMES = [bytes([i]) * 16 for i in range(8)]
CAPACITY = 700


def record(name: bytes, size: int) -> bytes:
    """A real record of about ``size`` payload bytes under ``name``."""
    return encode(ChecksumSeal(), 0, bytes(16), name, bytes(16), bytes(16), name[:1] * size)


class DiskModel(RuleBasedStateMachine):
    """Every step: what the tier returns is exactly the model's record or None, and the
    index, the files and the byte count agree, under capacity."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.tier = DiskTier(self.dir, CAPACITY)
        self.model: OrderedDict[bytes, bytes] = OrderedDict()  # least recently used first

    @rule(name=st.sampled_from(NAMES), size=st.integers(0, 300))
    def put(self, name: bytes, size: int) -> None:
        data = record(name, size)
        self.tier.put_many([(name, data)])
        if name not in self.model:
            self.model[name] = data
            while sum(map(len, self.model.values())) > CAPACITY:
                self.model.popitem(last=False)

    @rule(names=st.lists(st.sampled_from(NAMES), max_size=4))
    def get(self, names: list[bytes]) -> None:
        got = self.tier.get_many(names)
        for name, data in zip(names, got, strict=True):
            assert data == self.model.get(name)
            if name in self.model:
                self.model.move_to_end(name)

    @rule(name=st.sampled_from(NAMES))
    def discard(self, name: bytes) -> None:
        self.tier.discard(name)
        self.model.pop(name, None)

    @rule()
    def restart(self) -> None:
        self.tier.close()
        self.tier = DiskTier(self.dir, CAPACITY)
        # A restart orders by file age: what stays must be the same set, recency may differ.
        found = self.tier.get_many(list(self.model))
        assert found == list(self.model.values())
        self.model = OrderedDict((n, self.model[n]) for n in self.tier._files)

    @invariant()
    def consistent(self) -> None:
        self.tier.check_invariants()
        assert self.tier.counters().blocks == len(self.model)
        order = list(self.tier._files)
        assert self.tier.holds(NAMES) == [n in self.model for n in NAMES]
        assert list(self.tier._files) == order  # asking changes no recency

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


TestDiskModel = DiskModel.TestCase
TestDiskModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


_WRITER = """
import sys
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.record import encode
from prefixkv.tiers.seal import ChecksumSeal
tier = DiskTier(sys.argv[1], 1 << 30)
print("ready", flush=True)
i = 0
while True:
    name = i.to_bytes(16, "little")
    tier.put_many([(name, encode(ChecksumSeal(), 0, bytes(16), name, bytes(16), bytes(16), bytes(4 << 20)))])
    i += 1
"""


@pytest.mark.process
def test_a_writer_killed_mid_write_leaves_only_whole_records(tmp_path: Path) -> None:
    for round_ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        time.sleep(0.3 + 0.1 * round_)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    tier = DiskTier(tmp_path, 1 << 30)
    tier.check_invariants()
    assert tier.counters().blocks > 0
    names = list(tier._files)
    for name, data in zip(names, tier.get_many(names), strict=True):
        assert data == encode(
            ChecksumSeal(), 0, bytes(16), name, bytes(16), bytes(16), bytes(4 << 20)
        )
    assert not any((tmp_path / "prefixkv-v1" / "tmp").iterdir())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that fills for real."""
    with tmpfs(tmp_path / "small", "1m") as mount:
        yield mount


@pytest.mark.process
def test_a_full_disk_degrades_the_tier_and_logs_once(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tier = DiskTier(small_disk, 1 << 30, retry_after=60.0)
    try:
        big = [(n, record(n, 300_000)) for n in NAMES]
        tier.put_many(big)  # three fit in 1 MiB, the fourth fails, the rest are skipped
        counters = tier.counters()
        assert counters.blocks == 3 and counters.errors == 1
        assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
        assert tier.get_many(NAMES[:3]) == [data for _, data in big[:3]]
        tier.check_invariants()
        assert not any((small_disk / "prefixkv-v1" / "tmp").iterdir())
    finally:
        tier.close()  # it holds its directory open: the tmpfs is unmounted next


_SHARED_WRITER = """
import sys
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.record import encode
from prefixkv.tiers.seal import ChecksumSeal
tier = DiskTier(sys.argv[1], int(sys.argv[2]))
for i in range(200):
    name = (i % 40).to_bytes(16, "little")
    if tier.get_many([name])[0] is None:
        tier.put_many([(name, encode(ChecksumSeal(), 0, bytes(16), name, bytes(16), bytes(16), name * 4096))])
"""


@pytest.mark.process
def test_two_processes_on_one_directory_never_corrupt_it(tmp_path: Path) -> None:
    capacity = 20 * (64 * 1024 + 200)  # half the names fit: both processes evict
    writers = [
        subprocess.Popen([sys.executable, "-c", _SHARED_WRITER, str(tmp_path), str(capacity)])
        for _ in range(2)
    ]
    assert [w.wait(60) for w in writers] == [0, 0]
    tier = DiskTier(tmp_path, 1 << 30)
    names = list(tier._files)
    assert names
    for name, data in zip(names, tier.get_many(names), strict=True):
        assert data == encode(ChecksumSeal(), 0, bytes(16), name, bytes(16), bytes(16), name * 4096)
    tier.check_invariants()
