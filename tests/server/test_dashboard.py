"""The dashboard in-process over the fake engine: its page and files, who sees which figures,
and the history behind it (rates between readings, gaps, the ring's bound); the quantiles of
the latency window against a sorted-list reference."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from prefixkv.cache.protocol import CacheStats
from prefixkv.engine.batch.canary import CanaryCounts
from prefixkv.server.history import Point, Reading
from prefixkv.server.latency import LatencyWindow
from prefixkv.server.steps import StepTotals

from .conftest import App, running_app

KEYS = ("key-of-ana", "key-of-bo")
ADMIN = "key-of-the-admin"
MESSAGES: Any = [
    {"role": "system", "content": "You keep the lighthouse's log. " * 4},
    {"role": "user", "content": "Any ships tonight?"},
]


def ask(app: App, key: str) -> None:
    app.openai(key).chat.completions.create(
        model="fake", messages=MESSAGES, max_tokens=2, temperature=0
    )


HOUR = 3600.0  # the background sampler's interval in these tests: only their own samples count


def sample(app: App) -> None:
    """One reading, once the last reply's job has left the runner (a reply reaches the
    client a moment before its job's bookkeeping ends)."""
    state = app.http.app.state.prefixkv  # type: ignore[attr-defined]
    assert state.scheduler.wait_idle(10)
    state.history.sample()


def data(app: App, key: str, since: float = 0.0) -> dict[str, Any]:
    response = app.http.get(f"/v1/dashboard?since={since}", headers=app.headers(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_page_and_files_are_served_with_a_strict_policy(app: App) -> None:
    page = app.http.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "/dashboard/app.js" in page.text and "http" not in page.text.replace("http-equiv", "")
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        file = app.http.get(f"/dashboard/{name}")
        assert file.status_code == 200 and file.headers["content-type"].startswith(kind)
    script = app.http.get("/dashboard/app.js").text
    assert 'fetch("/v1/dashboard' in script and "https://" not in script
    for name in ("../app.py", "history.py", "index.htm"):
        assert app.http.get(f"/dashboard/{name}").status_code == 404


def test_data_needs_a_key_and_a_tenant_sees_only_its_own() -> None:
    with running_app(api_keys=KEYS, admin_keys=(ADMIN,), sample_seconds=HOUR) as app:
        assert app.http.get("/v1/dashboard").status_code == 401
        assert app.http.get("/dashboard").status_code == 200  # the page holds no figures
        sample(app)
        ask(app, KEYS[0])
        ask(app, KEYS[0])
        sample(app)
        ana, bo, admin = data(app, KEYS[0]), data(app, KEYS[1]), data(app, ADMIN)
    assert ana["scope"] == bo["scope"] == "tenant" and admin["scope"] == "all"
    assert ana["now"]["hit_tokens"] > 0 and bo["now"]["hit_tokens"] == 0
    for view in (ana, bo):
        assert "free_blocks" not in view["now"] and "tenants" not in view
        (point,) = view["points"]
        assert set(point) == {
            "t",
            "hit_rate",
            "hit_tokens_per_s",
            "query_tokens_per_s",
            "evicted_blocks_per_s",
            "used_blocks",
        }
    assert bo["points"][-1]["hit_rate"] is None  # no lookup of its own: a gap, not a zero
    assert 0 < ana["points"][-1]["hit_rate"] < 1
    (point,) = admin["points"]
    assert point["running"] == 0 and point["waiting"] == 0  # the fake runner reports no steps
    assert point["ttft_p50"] is not None and point["ttft_p99"] >= point["ttft_p50"]
    assert len(admin["tenants"]) == 3  # two keys and the admin's own tenant
    shares = {t["tenant"]: t for t in admin["tenants"]}
    assert sum(t["used_blocks"] for t in shares.values()) == admin["now"]["used_blocks"]


def test_since_returns_only_newer_points() -> None:
    with running_app(sample_seconds=HOUR) as app:
        for _ in range(4):
            sample(app)
        points = data(app, "")["points"]
        later = data(app, "", since=points[1]["t"])["points"]
    assert len(points) == 3 and [p["t"] for p in points] == sorted(p["t"] for p in points)
    assert later == points[2:]


def _stats(query: int, hit: int, evicted: int = 0) -> CacheStats:
    return CacheStats(
        queries=1,
        query_tokens=query,
        hit_tokens=hit,
        full_hits=0,
        partial_hits=0,
        misses=0,
        inserted_blocks=0,
        evicted_blocks=evicted,
        dropped_blocks=0,
        used_blocks=3,
        free_blocks=5,
        total_blocks=10,
        pinned_blocks=0,
        reserved_blocks=2,
        block_size=4,
        used_bytes=0,
        capacity_bytes=0,
    )


def _reading(t: float, stats: CacheStats, steps: StepTotals) -> Reading:
    misses = {"cold": int(t) * 10, "evicted": 0}
    canary = CanaryCounts(
        checks=int(t), mismatches=0, skipped=0, recomputed_tokens=0, discarded_blocks=0
    )
    return Reading(t, stats, {"a": stats}, {}, steps, 1, 2, [0.1, 0.4], misses, canary)


def test_a_point_is_the_rates_between_two_readings() -> None:
    before = _reading(100.0, _stats(1000, 200), StepTotals(10, 40, 400, 1.0, 40))
    after = _reading(102.0, _stats(1400, 500, evicted=6), StepTotals(14, 60, 500, 1.5, 60))
    point = Point.between(before, after)
    assert point.server["hit_rate"] == 300 / 400
    assert point.server["hit_tokens_per_s"] == 150 and point.server["query_tokens_per_s"] == 200
    assert point.server["evicted_blocks_per_s"] == 3
    assert point.server["batch_size"] == 20 / 4 and point.server["decode_tokens_per_s"] == 10
    assert point.tenants["a"]["hit_rate"] == 300 / 400
    assert point.server["miss_cold_per_s"] == 10 and point.server["miss_evicted_per_s"] == 0
    assert point.server["canary_checks"] == 102
    idle = Point.between(after, _reading(103.0, after.cache, after.steps))
    assert idle.server["hit_rate"] is None and idle.server["batch_size"] is None
    assert idle.server["decode_tokens_per_s"] == 0


def test_the_history_keeps_at_most_its_capacity(app: App) -> None:
    history = app.http.app.state.prefixkv.history  # type: ignore[attr-defined]
    capacity = history._points.maxlen
    for _ in range(capacity + 5):
        history.sample()
    assert len(history.since(0.0)) == capacity


@given(
    st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10)), max_size=60),
    st.floats(0, 100),
    st.sampled_from([0.5, 0.9, 0.99]),
)
def test_window_quantiles_match_a_sorted_reference(
    entries: list[tuple[float, float]], now: float, q: float
) -> None:
    clock = [0.0]
    window = LatencyWindow(span=30.0, limit=1000, clock=lambda: clock[0])
    for at, seconds in sorted(entries):
        clock[0] = at
        window.add(seconds)
    clock[0] = max([now, *[at for at, _ in entries]])
    kept = sorted(s for at, s in entries if at >= clock[0] - 30.0)
    (found,) = window.quantiles((q,))
    if not kept:
        assert found is None
    else:
        rank = min(len(kept), max(1, round(q * len(kept))))
        assert found == kept[rank - 1]
