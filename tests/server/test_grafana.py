"""docs/grafana/prefixkv.json queries only series the server exports: every metric name in
every panel's PromQL is found in a real exposition (the app after a request, and the
metrics of a cache with a disk tier for the tier series)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prefixkv.server.metrics import ServerMetrics
from prefixkv.server.steps import StepMetrics
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.tiered import TieredCache

from ..tiers.kv import hot_cache
from .conftest import running_app

BOARD = Path(__file__).parents[2] / "docs" / "grafana" / "prefixkv.json"
NAME = re.compile(r"\bprefixkv_[a-z0-9_]+")


def exported_names(exposition: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def test_every_queried_metric_is_exported(tmp_path: Path) -> None:
    board = json.loads(BOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    queried = {name for expr in exprs for name in NAME.findall(expr)}
    assert len(queried) >= 20

    with running_app() as app:
        app.openai().chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hello"}], max_tokens=2
        )
        names = exported_names(app.http.get("/metrics").text)
    tiered = TieredCache(hot_cache(4), [DiskTier(tmp_path, 1 << 20)], bytes(16), insecure=True)
    try:
        metrics = ServerMetrics(tiered, StepMetrics(), lambda: 0)
        names |= exported_names(metrics.exposition().decode())
    finally:
        tiered.shutdown()
    assert sorted(queried - names) == []


def test_panels_are_well_formed() -> None:
    board = json.loads(BOARD.read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["title"] and refs and len(refs) == len(set(refs))
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
