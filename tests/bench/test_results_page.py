"""``prefixkv bench results-page``: every figure on docs/results.md comes from a JSON in
results/, with the command that made it, and the committed page is what results/ gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefixkv.bench import results_page
from prefixkv.cli import commands as cli

ROOT = Path(__file__).resolve().parents[2]
MACHINE = {"cpu": "Test CPU", "cores": 2, "python": "3.11.7"}


def _write(folder: Path, name: str, data: object) -> None:
    (folder / name).write_text(json.dumps(data))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    _write(
        folder,
        "tiers.json",
        {
            "machine": MACHINE,
            "args": {
                "model": "smollm2",
                "cases": "['restore', 'workset']",
                "quick": "True",
                "threads": "None",
                "seed": "0",
            },
            "targets": [
                {"target": "restore from disk >= 10x", "value": 65.2820473, "met": True},
                {"target": "restart >= 8x", "value": 7.2995, "met": False},
            ],
            "restore": [
                {"path": "recompute", "tokens": 1008, "ms_per_1000_p50": 1678.1085},
                {"path": "disk", "tokens": 1008, "ms_per_1000_p50": 25.71, "samples_ms": [1, 2]},
            ],
            "restart": {"speedup": 7.2995, "rounds": [{"cold": {}}], "met": False},
            "samples": [{"t": 1.0}],
        },
    )
    _write(
        folder,
        "index_ops.json",
        {"machine": MACHINE, "date": "2026-12-06", "rows": [{"op": "lookup", "us": 1.25}]},
    )
    return folder


def test_each_file_is_a_section_with_its_command_machine_and_tables(results: Path) -> None:
    page = results_page.render(results)
    assert page.index("## index: ") < page.index("## tiers: ")  # sorted by file name
    assert "prefixkv bench index\n```" in page  # no args recorded: the bare command
    # Options from the JSON's args: lists joined, flags bare, None and false left out.
    assert "prefixkv bench tiers --model smollm2 --cases restore,workset --quick --seed 0" in page
    assert "--threads" not in page
    assert "Machine: cpu Test CPU, cores 2, python 3.11.7." in page
    assert "Date: 2026-12-06." in page
    assert "| restore from disk >= 10x | 65.28 | yes |" in page
    assert "| restart >= 8x | 7.3 | no |" in page
    assert "| path | ms_per_1000_p50 |" in page  # samples_ms (a list) is no column
    assert "| disk | 25.71 |" in page
    assert "Every row: tokens 1008." in page  # a constant column said once
    assert "| speedup | 7.3 |" in page and "rounds" not in page
    assert "### samples" not in page  # raw samples are not headlines
    assert "| lookup | 1.25 |" in page


def test_a_recorded_command_is_used_as_is(results: Path) -> None:
    _write(results, "custom.json", {"command": "python benchmarks/lockstep.py --seeds 3", "x": 1})
    page = results_page.render(results)
    assert "## custom\n\n```\npython benchmarks/lockstep.py --seeds 3\n```" in page
    assert "| x | 1 |" in page


@pytest.mark.parametrize(
    ("text", "said"),
    [("{not json", "not a readable JSON file"), ("[1, 2]", "JSON object, not list")],
)
def test_a_malformed_file_is_an_error_naming_it(results: Path, text: str, said: str) -> None:
    (results / "decode.json").write_text(text)
    with pytest.raises(results_page.ResultsError, match=said) as raised:
        results_page.render(results)
    assert str(results / "decode.json") in str(raised.value)


def test_a_file_no_command_made_is_an_error_naming_it(results: Path) -> None:
    _write(results, "mystery.json", {"x": 1})
    with pytest.raises(results_page.ResultsError, match=r"mystery\.json.*'command'"):
        results_page.render(results)


def test_the_command_writes_checks_and_reports_errors(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.md"
    argv = ["bench", "results-page", "--results", str(results), "--out", str(out)]
    assert cli.main([*argv, "--check"]) == 1  # nothing written yet
    assert cli.main(argv) == 0
    assert out.read_text() == results_page.render(results)
    assert cli.main([*argv, "--check"]) == 0
    (results / "soak.json").write_text("{")
    assert cli.main(argv) == 2
    assert "soak.json: not a readable JSON file" in capsys.readouterr().err


def test_every_results_file_names_a_benchmark() -> None:
    """Each benchmark writes results/<its module>.json by default, so the page can name it."""
    for name, (module, _) in cli.BENCHES.items():
        assert results_page.bench_for(module.rsplit(".", 1)[-1]) == (name, cli.BENCHES[name][1])


def test_docs_results_md_is_current() -> None:
    """docs/results.md is what results/ gives: after a benchmark writes results/, run
    ``prefixkv bench results-page`` and commit both."""
    page = results_page.render(ROOT / "results")
    assert (ROOT / "docs" / "results.md").read_text() == page, (
        "docs/results.md is stale: run `prefixkv bench results-page` from the repository root"
    )
