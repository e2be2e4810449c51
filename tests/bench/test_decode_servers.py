"""``bench decode --servers``: the figures from replies, and the plan one client gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefixkv.bench import roofline, servers
from prefixkv.bench.decode_servers import measure, report_line, requests
from prefixkv.bench.serve_client import Reply


def _reply(gaps: tuple[float, ...]) -> Reply:
    return Reply("text", 0.5, 0.5 + sum(gaps), gaps, 700, 690, len(gaps) + 1)


def _setting() -> servers.Setting:
    return servers.Setting("vllm-cpu", servers.VLLM, (), "test", weights="bf16")


def test_measure_times_every_gap_against_the_format_floor() -> None:
    replies = [_reply((0.02, 0.02, 0.04)), _reply((0.02, 0.03))]
    size = roofline.ModelSize(100, 200_000_000)
    row = measure(_setting(), replies, size, bandwidth=20e9, rss=1 << 30)
    assert row["tokens_timed"] == 5 and row["p50_ms"] == pytest.approx(20.0)
    assert row["floor_ms"] == pytest.approx(10.0) and row["over_floor"] == pytest.approx(2.0)
    assert row["weights"] == "bf16" and row["tokens_per_s"] == pytest.approx(50.0)
    line = report_line(row)
    assert "vllm-cpu" in line and "2.00x floor" in line and "1024 MiB" in line


def test_measure_refuses_replies_with_nothing_to_time() -> None:
    with pytest.raises(RuntimeError, match="no reply had two text chunks"):
        measure(_setting(), [_reply(())], roofline.ModelSize(1, 1), 1e9, None)


def test_requests_share_one_document() -> None:
    work = requests(3)
    assert len({r.messages[0] for r in work}) == 1 and len({r.messages for r in work}) == 3


def test_gguf_size_counts_every_tensor_once(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("a", np.zeros((4, 8), dtype=np.float32))
    writer.add_tensor("b", np.zeros((2, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert roofline.gguf_size(path) == roofline.ModelSize(32 + 64, 32 * 4 + 64 * 2)


def test_each_request_goes_to_every_server_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Request-major order (so the host's drift hits every server alike), each server's
    replies kept apart, in the work's order."""
    import asyncio
    import contextlib
    from types import SimpleNamespace

    from prefixkv.bench import decode_servers

    asked: list[tuple[str, int]] = []

    async def ask(api: str, model: str, request: object, max_tokens: int) -> Reply:
        asked.append((api, work.index(request)))  # type: ignore[arg-type]
        return _reply((0.01 * len(asked),))

    @contextlib.asynccontextmanager
    async def client(url: str, headers: object) -> object:
        yield url

    monkeypatch.setattr(decode_servers, "ask", ask)
    monkeypatch.setattr(decode_servers, "api_client", client)
    up = [(_setting(), SimpleNamespace(url=u, headers={}, model="m")) for u in ("a", "b", "c")]
    work = requests(2)
    replies = asyncio.run(decode_servers._in_turn(up, work, 8))  # type: ignore[arg-type]
    assert asked == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("c", 1)]
    assert [[r.gaps[0] for r in said] for said in replies] == [
        pytest.approx([0.01, 0.04]),
        pytest.approx([0.02, 0.05]),
        pytest.approx([0.03, 0.06]),
    ]
