"""``prefixkv simulate`` on a written log: the table's figures are the replay's, the curve
is a PNG, a bad log is refused naming its line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from prefixkv.cli import main
from prefixkv.cli.progress import Progress
from prefixkv.whatif.records import LoggedRequest, read_log
from prefixkv.whatif.replay import CacheConfig, Replay

from .workloads import BLOCK, chain, write_log


def chat_log() -> list[LoggedRequest]:
    """Ten users, each asking three questions over one long shared document."""
    logged = []
    for turn in range(3):
        for user in range(10):
            symbols = [0] * 20 + [user + 1] * (turn + 2)
            names = chain(symbols)
            logged.append(LoggedRequest(names, (), len(names) * BLOCK + 2, 0, 1, 0.05, BLOCK, 1000))
    return logged


def test_the_table_is_the_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log, png = tmp_path / "log.jsonl", tmp_path / "curve.png"
    logged = chat_log()
    write_log(log, logged)
    code = main(
        ["simulate", "--log", str(log), "--cache-bytes", "20KiB,40KiB,1MiB",
         "--policy", "lru,lfu", "--plot", str(png)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "30 requests" in out and "measured from the log" in out
    rows = [row for row in map(str.split, out.splitlines()) if row[:1] in (["20KiB"], ["1MiB"])]
    assert len(rows) == 4
    for row in rows:
        ram = 20 << 10 if row[0] == "20KiB" else 1 << 20
        replay = Replay(CacheConfig(ram, row[2]), 1000)
        for r in read_log(log):
            replay.feed(r)
        assert row[3] == f"{100 * replay.result().hit_rate:.1f}%"
    # 1 MiB holds everything: every repeat of the document and each user's history hits.
    big = next(row for row in rows if row[0] == "1MiB")
    assert float(big[3].rstrip("%")) > 80


def test_a_given_prefill_rate_and_block_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    write_log(log, chat_log())
    args = ["simulate", "--log", str(log), "--cache-bytes", "1MiB", "--block-bytes", "40000",
            "--disk-cache-bytes", "100MiB", "--prefill-rate", "1000",
            "--plot", str(tmp_path / "c.png")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "given with --prefill-rate" in out and "blocks of 40,000 bytes" in out
    # 26 blocks of RAM hold the document and one user's turn; the disk below holds every
    # turn, so RAM and disk find what a cache that never evicts finds.
    row = next(row.split() for row in out.splitlines() if row.split()[:1] == ["1MiB"])
    unbounded = Replay(CacheConfig(1 << 30), 1000)
    for r in read_log(log):
        unbounded.feed(r)
    assert row[1] == "100MiB" and row[3] == f"{100 * unbounded.result().hit_rate:.1f}%"
    assert float(row[4].rstrip("%")) < float(row[3].rstrip("%"))
    assert main([*args[:-2], "--model", str(tmp_path)]) == 2
    assert "give --block-bytes or --model, not both" in capsys.readouterr().err


def test_a_bad_line_is_refused_by_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    write_log(log, chat_log()[:2])
    log.write_text(log.read_text() + '{"blocks": ["zz"]}\n')
    assert main(["simulate", "--log", str(log), "--plot", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert f"{log}:3: blocks holds a value that is not a hex block name" in err
    write_log(log, chat_log()[:2])
    too_small = ["simulate", "--log", str(log), "--cache-bytes", "999"]
    assert main(too_small) == 2
    assert "--cache-bytes: 999 bytes hold no block of 1000 bytes" in capsys.readouterr().err


def test_progress_draws_on_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown, hidden = Terminal(), io.StringIO()
    for out in (shown, hidden):
        bar = Progress(4, "replaying", out)
        for _ in range(4):
            bar.advance()
        bar.close()
    assert shown.getvalue().endswith("replaying [" + "#" * 30 + "] 4/4\n")
    assert hidden.getvalue() == ""
