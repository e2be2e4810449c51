"""A real ``prefixkv serve --kv-events`` (tiny model, disk tier): a subscriber that joins
after start (so replays from 0) rebuilds what RAM and the disk hold, with one name per block
in both media, and sees a reset empty RAM but not the disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.conftest import TINY_ARGS
from tests.server.harness import ServerProcess, free_port, wait_for

from .subscriber import Subscriber

RAM = ("CPU", None, None)
DISK = ("STORAGE", "LOCAL", "disk")
ADMIN = "admin-key-of-the-event-tests"


def synced(server: ServerProcess, subscriber: Subscriber) -> None:
    """Read the stream up to what the server has published once it is quiet."""
    last = -1.0
    while (now := server.metrics()["prefixkv_kv_events_batches_total"]) != last:
        last = now
        wait_for(lambda: False, 0.3)
    subscriber.sync(int(last))


@pytest.mark.process
@pytest.mark.slow
def test_a_server_publishes_what_ram_and_disk_hold(tiny_model_dir: Path, tmp_path: Path) -> None:
    pub, replay = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    args = ["--model", str(tiny_model_dir), *TINY_ARGS, "--admin-key", ADMIN]
    args += ["--disk-cache", str(tmp_path / "kv"), "--kv-events", pub, "--kv-events-replay", replay]
    server = ServerProcess(args, tmp_path / "server.log", api_key=ADMIN).wait_ready()
    subscriber = Subscriber(pub, replay)
    try:
        document = "".join(f"line {i}: the quick brown fox. " for i in range(8))
        reply = server.client().completions.create(
            model="tiny", prompt=document, max_tokens=4, temperature=0
        )
        assert reply.choices
        wait_for(lambda: server.stats()["tiers"][0]["blocks"] >= server.stats()["used_blocks"])
        synced(server, subscriber)
        ram, disk = subscriber.media[RAM], subscriber.media[DISK]
        assert len(ram) == server.stats()["used_blocks"] > 0
        assert len(disk) == server.stats()["tiers"][0]["blocks"] > 0
        assert set(disk) <= set(ram)  # one name per block in every medium
        assert all(disk[name] == ram[name] for name in disk)  # parents and tokens too
        assert subscriber.replays >= 1  # joined after start: batch 0 came by replay
        assert server.post("/v1/cache/reset", json={"scope": "all"}).status_code == 200
        synced(server, subscriber)
        assert subscriber.media[RAM] == {} and subscriber.media[DISK] == disk
        assert server.metrics()["prefixkv_kv_events_dropped_reports_total"] == 0
    finally:
        subscriber.close()
        assert server.stop() == 0, server.output()
    assert f"KV events on {pub}, replay on {replay}" in server.output()
    assert "Traceback" not in server.output()
