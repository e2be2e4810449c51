"""``prefixkv bench serve``: concurrent streaming clients against real servers, one server at
a time, on a shared-prefix workload with long documents.

Settings (``--settings``, see :mod:`prefixkv.bench.servers`): ``prefixkv serve`` with its
defaults, with ``--backend serial`` (the serial reference: one request at a time) and with ``--no-prefix-cache``;
``transformers serve --continuous-batching`` with its defaults and with a cache matched to
ours (16-token blocks, the same KV bytes, sdpa attention). Each server is started, warmed
up, driven at every ``--clients`` count and stopped before the next starts: two loaded
servers on a small machine would disturb each other.

The workload: ``--documents`` documents of about 700 tokens; each client asks
``--requests-per-client`` questions about one of them; every client count gets fresh
documents, so a server never finds an earlier count's documents cached. Per (setting,
clients): req/s, output tokens/s, TTFT and inter-token latency p50/p99 (client side, see
:mod:`prefixkv.bench.serve_client`), the token hit rate (cached / prompt tokens from usage;
transformers reports no cached tokens), replies identical to the reference setting's
(``prefixkv-serial`` when run, else the first prefixkv setting), and the measured time
against the minimum of :mod:`prefixkv.bench.roofline`, where the uncached prompt tokens are
those an unbounded exact prefix cache would compute (tokenized with the model's chat
template) and the output tokens are the ones the setting produced. With ``--n N``, each
setting also times one request with ``n = N`` against one with ``n = 1``
(:mod:`prefixkv.bench.serve_n`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefixkv.bench import roofline, servers
from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.results_page import command_of
from prefixkv.bench.serve_client import Phase, drive, warm_up
from prefixkv.bench.serve_n import n_line, run_n
from prefixkv.bench.serve_report import chart, comparison_line, comparisons, line, summarize
from prefixkv.bench.workloads import Request, document_qa_workload
from prefixkv.cli.options import add_option, parse_bytes, positive_int


def client_counts(text: str) -> list[int]:
    """``1,4,16,64`` as a list of positive ints, in the given order, duplicates dropped."""
    counts = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not counts:
        raise ValueError(f"no client counts in {text!r}")
    return list(dict.fromkeys(counts))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefixkv bench serve", description=__doc__)
    add_option(p, "--model", "model spec", default="smollm2")
    add_option(
        p,
        "--settings",
        f"comma list of {', '.join(servers.NAMES)}; auto: every one that runs here",
        default="auto",
    )
    add_option(p, "--clients", "concurrent client counts", type=client_counts, default="1,4,16,64")
    add_option(
        p, "--requests-per-client", "questions each client asks", type=positive_int, default="2"
    )
    add_option(p, "--max-tokens", "tokens per reply", type=positive_int, default="32")
    add_option(p, "--documents", "documents the clients share", type=positive_int, default="3")
    add_option(
        p,
        "--sentences",
        "sentences per document (about 19 SmolLM2 tokens each)",
        type=positive_int,
        default="36",
    )
    add_option(p, "--cache-bytes", "KV cache size, both servers", type=parse_bytes, default="2GiB")
    add_option(
        p, "--block-size", "tokens per cache block, both servers", type=positive_int, default="16"
    )
    add_option(p, "--max-batch-tokens", "tokens per batched step, both servers", type=positive_int)
    add_option(
        p,
        "--n",
        "also time one request with n samples against one with n=1, per setting (1: not measured)",
        type=positive_int,
        default="1",
    )
    add_option(p, "--n-rounds", "rounds of the n measurement", type=positive_int, default="3")
    add_option(p, "--out", "JSON results file", type=Path, default="results/serve_load.json")
    add_option(p, "--chart", "PNG chart", type=Path, default="results/serve_load.png")
    return p


def workloads(args: argparse.Namespace) -> dict[int, list[Request]]:
    """Each client count's requests, with documents of its own."""
    return {
        c: document_qa_workload(c, args.requests_per_client, args.documents, args.sentences, seed=c)
        for c in args.clients
    }


def prompt_ids(folder: Path, work: dict[int, list[Request]]) -> dict[int, list[list[int]]]:
    """Per client count, every request's prompt as the model's chat template tokenizes it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def ids(request: Request) -> list[int]:
        got: Any = tokenizer.apply_chat_template(
            request.chat(), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return [int(t) for t in got]

    return {c: [ids(r) for r in requests] for c, requests in work.items()}


def choose(
    args: argparse.Namespace, table: dict[str, servers.Setting], plan: servers.Plan
) -> list[servers.Setting]:
    """The settings to run: those asked for (all for ``auto``) minus the ones that cannot run
    here, each skipped with its reason printed."""
    asked = servers.parse_settings(args.settings, list(table))
    names = list(table) if asked is None else asked
    helps = {kind: servers.help_text(kind) for kind in {table[n].kind for n in names}}
    chosen = []
    for name in names:
        reason = servers.skip_reason(table[name], helps, plan)
        if reason is None:
            chosen.append(table[name])
        else:
            print(f"# {name} skipped: {reason}", flush=True)
    return chosen


def run_setting(
    setting: servers.Setting,
    plan: servers.Plan,
    args: argparse.Namespace,
    work: dict[int, list[Request]],
    bar: Any,
    logs: Path,
) -> tuple[list[Phase], dict[str, Any]]:
    """Start the setting's server, warm it up, drive every client count, stop it. Returns the
    phases and facts about the server (load time, peak memory, flags)."""
    server = servers.ServerProcess(setting, plan, logs / f"{setting.name}.log")
    try:
        load = server.wait_ready()
        asyncio.run(warm_up(server.url, server.model, args.max_tokens, server.headers))
        phases = []
        for clients, requests in work.items():
            replies, seconds = asyncio.run(
                drive(
                    server.url,
                    server.model,
                    requests,
                    clients,
                    args.max_tokens,
                    bar.update,
                    server.headers,
                )
            )
            phases.append(Phase(setting.name, clients, replies, seconds))
        facts: dict[str, Any] = {"flags": list(setting.flags), "load_s": load}
        if args.n > 1:
            cost = run_n(server.url, server.model, dict(server.headers), args)
            print(n_line(setting.name, cost), flush=True)
            facts["n_cost"] = {**asdict(cost), "ratio": cost.ratio, "best_ratio": cost.best_ratio}
        facts["peak_rss_bytes"] = server.peak_rss()
    finally:
        server.stop()
    return phases, facts


def reference_name(chosen: list[servers.Setting]) -> str:
    """The setting whose replies the others are compared with."""
    names = [s.name for s in chosen]
    if "prefixkv-serial" in names:
        return "prefixkv-serial"
    return next((s.name for s in chosen if s.kind == servers.PREFIXKV), names[0])


def make_plan(
    args: argparse.Namespace, folder: Path, work: dict[int, list[Request]], longest: int
) -> servers.Plan:
    """What every setting shares; ``longest``: the longest prompt in tokens."""
    return servers.plan_for(
        args.model,
        folder,
        cache_bytes=args.cache_bytes,
        block_size=args.block_size,
        max_queue=max(len(r) for r in work.values()) + 1,
        max_batch_tokens=args.max_batch_tokens,
        slots=max(args.clients),
        slot_tokens=-(-(longest + args.max_tokens + 16) // 256) * 256,
    )


def weight_sizes(folder: Path, gguf: Path | None) -> dict[str, roofline.ModelSize]:
    """Parameters and the bytes one decode step streams, per ``Setting.weights``: the file's
    own formats (the GGUF's blocks, else the folder as stored), fp32 and bf16."""
    folder_size = roofline.model_size(folder)
    stored = folder_size if gguf is None else roofline.gguf_size(gguf)
    return {
        servers.AS_STORED: stored,
        "fp32": roofline.as_dtype(folder_size, 4),
        "bf16": roofline.as_dtype(folder_size, 2),
    }


def header(args: argparse.Namespace, chosen: list[servers.Setting], sizes: list[int]) -> str:
    """The run's description line (``sizes``: every prompt's length in tokens)."""
    return (
        f"# prefixkv bench serve: {args.model}, clients {args.clients} x "
        f"{args.requests_per_client} questions about {args.documents} documents, prompts of "
        f"{min(sizes)}-{max(sizes)} tokens, max_tokens {args.max_tokens}, greedy; "
        f"settings {', '.join(s.name for s in chosen)}"
    )


def run_all(
    chosen: list[servers.Setting],
    plan: servers.Plan,
    args: argparse.Namespace,
    work: dict[int, list[Request]],
) -> tuple[list[Phase], dict[str, Any]]:
    """Every chosen setting in turn under one progress bar; returns phases and server facts."""
    from tqdm import tqdm

    phases: list[Phase] = []
    facts = {}
    total = len(chosen) * sum(len(r) for r in work.values())
    with (
        tempfile.TemporaryDirectory(prefix="prefixkv-bench-") as logs,
        tqdm(total=total, desc="bench serve", unit="req") as bar,
    ):
        for setting in chosen:
            got, facts[setting.name] = run_setting(setting, plan, args, work, bar, Path(logs))
            phases += got
    return phases, facts


def write(
    args: argparse.Namespace,
    context: dict[str, Any],
    phases: list[Phase],
    summaries: list[dict[str, Any]],
    compared: list[dict[str, Any]],
) -> None:
    """The JSON results (``context`` first, every reply last) and the chart."""
    replies = [
        {"setting": p.setting, "clients": p.clients, "replies": [asdict(r) for r in p.replies]}
        for p in phases
    ]
    result = {**context, "summaries": summaries, "comparisons": compared, "replies": replies}
    # recorded, so a results file under another name (--out) still says what made it
    result = {"command": command_of("serve", result), **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.chart.parent.mkdir(parents=True, exist_ok=True)
    chart(summaries, args.chart)
    print(f"# wrote {args.out} and {args.chart}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every prefixkv setting replied as the reference did."""
    args = parser().parse_args(argv)
    work = workloads(args)
    folder = servers.model_folder(args.model)
    prompts = prompt_ids(folder, work)
    plan = make_plan(args, folder, work, max(len(p) for ps in prompts.values() for p in ps))
    table = servers.settings_table(plan)
    chosen = choose(args, table, plan)
    if not chosen:
        print("# nothing to run")
        return 2
    info, sizes = machine_info(), weight_sizes(folder, plan.gguf)
    rates = roofline.measure_machine()
    print(describe(info), roofline.describe(rates, sizes[servers.AS_STORED]), sep="\n")
    print(header(args, chosen, [len(p) for ps in prompts.values() for p in ps]), flush=True)
    phases, facts = run_all(chosen, plan, args, work)
    after = roofline.measure_machine()
    print(roofline.describe_remeasured(after))
    rates = rates.best(after)
    ref = reference_name(chosen)
    refs = {p.clients: p for p in phases if p.setting == ref}
    uncached = {c: roofline.distinct_prefix_tokens(p) for c, p in prompts.items()}
    summaries = [
        summarize(
            p,
            refs[p.clients],
            table[p.setting],
            rates,
            sizes[table[p.setting].weights],
            uncached[p.clients],
        )
        for p in phases
    ]
    compared = comparisons(summaries)
    print("\n".join([*map(line, summaries), *map(comparison_line, compared)]))
    context: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    context |= {"model_folder": str(folder), "roofline": asdict(rates)}
    context |= {"weights": {name: asdict(size) for name, size in sizes.items()}}
    write(args, context | {"reference": ref, "servers": facts}, phases, summaries, compared)
    exact = all(s["identical"] == s["requests"] for s in summaries if s["kind"] == servers.PREFIXKV)
    return 0 if exact else 1
