"""The ``prefixkv`` command: ``serve``, ``chat``, ``explain`` and ``bench``.

Every option has an environment variable ``PREFIXKV_<OPTION>`` (dashes become underscores);
an option given on the command line wins over its variable (see :mod:`prefixkv.cli.options`). Heavy imports (torch,
transformers, FastAPI) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from prefixkv.cli import simulate, warm
from prefixkv.cli.options import (
    Parser,
    ReplaceThenAppend,
    add_option,
    one_of,
    parse_bytes,
    positive_float,
    positive_int,
    rate_fraction,
    share_fraction,
    zmq_endpoint,
)
from prefixkv.cli.serving import serve_command
from prefixkv.cli.setup import CommandError, close_tiers, load_engine, write_tier_key
from prefixkv.extras import MissingExtraError, require

BENCHES = {
    "index": ("prefixkv.bench.index_ops", "prefix index operations (lookup, insert, evict)"),
    "classify": ("prefixkv.bench.classify", "what classifying a served miss adds per request"),
    "ttft": ("prefixkv.bench.ttft", "time to first token with and without the prefix cache"),
    "serve": ("prefixkv.bench.serve_load", "concurrent clients against the HTTP server"),
    "attention": ("prefixkv.bench.attention", "decode attention over pool blocks vs a buffer"),
    "decode": ("prefixkv.bench.decode", "decode tokens/s with 1, 4, 16 running vs serial"),
    "compression": ("prefixkv.bench.compression", "int8/int4 tier codecs: bytes, exactness"),
    "formats": ("prefixkv.bench.formats", "greedy agreement of each weight format with fp32"),
    "tiers": ("prefixkv.bench.tiers", "disk and Redis tiers vs recompute, RAM only, cold starts"),
    "soak": ("prefixkv.bench.soak", "a server under mixed traffic for minutes: leaks, errors"),
    "fleet": ("prefixkv.bench.fleet", "replicas behind vllm-router: cache-aware vs round-robin"),
    "results-page": ("prefixkv.bench.results_page", "write docs/results.md from results/*.json"),
    "make-model": ("prefixkv.bench.make_model", "write a random Llama/Qwen2 of a real size"),
}
# What each benchmark imports beyond the core (the index benchmark needs nothing more).
_BENCH_EXTRAS = {
    "ttft": ("hf", "bench"),
    "serve": ("server", "bench"),
    "attention": ("hf", "bench"),
    "decode": ("hf", "bench"),
    "compression": ("hf", "tiers"),
    "formats": ("hf", "tiers"),
    "tiers": ("server", "bench"),
    "soak": ("server", "bench"),
    "fleet": ("server", "bench"),  # and the vllm-router binary ([fleet]), checked by the bench
    "make-model": ("hf",),
}


def _engine_options(p: argparse.ArgumentParser) -> None:
    add_option(p, "--model", "model: 'smollm2', a model folder or a .gguf file", default="smollm2")
    add_option(p, "--cache-bytes", "prefix cache size", type=parse_bytes, default="2GiB")
    add_option(p, "--block-size", "tokens per cache block", type=positive_int, default="16")
    add_option(p, "--no-prefix-cache", "disable the prefix cache (baseline)", action="flag")
    add_option(
        p, "--disk-cache", "directory of a disk tier below the RAM cache (kept across restarts)"
    )
    add_option(p, "--disk-cache-bytes", "disk tier size", type=parse_bytes, default="16GiB")
    add_option(
        p,
        "--redis-url",
        "Redis tier below RAM and disk, shared by replicas: redis://HOST:PORT/DB",
        secret=True,  # it may hold a password
    )
    add_option(
        p,
        "--tier-compression",
        "KV quantization in the disk and Redis tiers (lossy: int8, int4)",
        type=one_of(["none", "int8", "int4"]),
        default="none",
    )
    add_option(
        p,
        "--tier-key-file",
        "file holding the tier key (64 hex digits, mode 0600) that seals disk and Redis "
        "records (AES-256-GCM) and keys block names; or the key itself in PREFIXKV_TIER_KEY",
    )
    add_option(
        p,
        "--tier-insecure",
        "allow a shared tier (Redis, a disk directory others can write) without a key: "
        "anyone who can write it can serve forged KV and read prompts' token ids",
        action="flag",
    )
    add_option(p, "--threads", "torch CPU threads (default: torch's choice)", type=positive_int)
    add_option(
        p,
        "--linear-kernel",
        "what runs the linear layers: native (prefixkv's own GEMM, built with the C "
        "compiler; float32 CPU; RMS norms and gated-SiLU MLPs of Llama-style families in C "
        "too), onednn (weights "
        "packed once; float32 CPU), torch (PyTorch's own), auto (native where it builds, "
        "else onednn where it runs)",
        type=one_of(["auto", "native", "onednn", "torch"]),
        default="auto",
    )
    add_option(
        p,
        "--weights",
        "what the native linear kernel streams each weight as: auto (the narrowest format that "
        "holds the loaded weights exactly: a GGUF's own Q8_0/Q4_0/Q4_1 blocks, bf16 for a bf16 "
        "checkpoint, else fp32; outputs identical to fp32), fp32, bf16 (every layer rounded: "
        "half fp32's bytes, not exact against it)",
        type=one_of(["auto", "fp32", "bf16"]),
        default="auto",
    )
    add_option(
        p,
        "--activations",
        "what the native linear kernel multiplies the weights with: fp32 (exact against the "
        "fp32 reference), q8 (Q8_0/Q4_0/Q4_1 layers: each input row quantized to 8 bits per "
        "32 values, integer dot products as llama.cpp; still cached == uncached and batched "
        "== alone, but not equal to fp32)",
        type=one_of(["fp32", "q8"]),
        default="fp32",
    )
    add_option(
        p,
        "--eviction-policy",
        "which cached blocks go first when the cache is full",
        type=one_of(["lru", "lfu"]),
        default="lru",
    )


def _batch_options(p: argparse.ArgumentParser) -> None:
    add_option(
        p,
        "--backend",
        "batch: continuous batching (many requests per forward pass); serial: one at a time",
        type=one_of(["batch", "serial"]),
        default="batch",
    )
    add_option(
        p, "--max-running", "most requests generating at once", type=positive_int, default="64"
    )
    add_option(
        p,
        "--max-batch-tokens",
        "most tokens per forward pass (longer prompts are prefilled in chunks)",
        type=positive_int,
        default="512",
    )
    add_option(
        p,
        "--attention-kernel",
        "what runs attention over the KV pool: native (one C call per layer, float32 CPU; "
        "built with the system's C compiler on first use), torch (PyTorch ops), auto (native "
        "where it builds)",
        type=one_of(["auto", "native", "torch"]),
        default="auto",
    )
    add_option(
        p,
        "--canary-rate",
        "the exactness canary: the fraction of requests served from the cache whose cached "
        "prefix is recomputed without it when the runner has spare room, and compared bit "
        "for bit (0: off)",
        type=rate_fraction,
        default="0.01",
    )
    add_option(
        p,
        "--schedule-policy",
        "which waiting request starts next: fcfs (arrival order) or lpm (longest cached prefix)",
        type=one_of(["fcfs", "lpm"]),
        default="fcfs",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="prefixkv", description="Exact prefix KV-cache reuse for LLM inference.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="OpenAI-compatible server with a prefix cache")
    _engine_options(serve)
    add_option(serve, "--host", "address to bind", default="127.0.0.1")
    add_option(
        serve,
        "--kv-events",
        "publish vLLM-format KV cache events (blocks stored and removed in RAM, disk and "
        "Redis) on this ZeroMQ PUB endpoint, bound here: tcp://HOST:PORT",
        type=zmq_endpoint,
    )
    add_option(
        serve,
        "--kv-events-replay",
        "ZeroMQ ROUTER endpoint answering replay requests for missed event batches (the "
        "last 10,000): tcp://HOST:PORT",
        type=zmq_endpoint,
    )
    add_option(serve, "--port", "TCP port", type=int, default="8000")
    add_option(
        serve,
        "--allowed-host",
        "Host header name to answer to, repeatable; '*' for any "
        "(default: loopback names when bound to loopback, else any)",
        action=ReplaceThenAppend,
        default=[],
    )
    add_option(
        serve,
        "--api-key",
        "required bearer key; repeat for several tenants (env: comma-separated)",
        secret=True,
        action=ReplaceThenAppend,
        default=[],
    )
    add_option(
        serve,
        "--tenant-share",
        "fraction of the cache within which a tenant's blocks are safe from other tenants",
        type=share_fraction,
    )
    add_option(
        serve,
        "--admin-key",
        "bearer key for whole-cache views, /metrics and a global reset",
        secret=True,
    )
    add_option(
        serve,
        "--allow-anonymous",
        "serve without any key on an address other than loopback (refused otherwise); "
        "callers are then one anonymous tenant, never the admin",
        action="flag",
    )
    add_option(serve, "--max-tokens-limit", "largest max_tokens", type=positive_int, default="2048")
    add_option(
        serve, "--default-max-tokens", "max_tokens when unset", type=positive_int, default="256"
    )
    add_option(serve, "--max-body-bytes", "largest request body", type=parse_bytes, default="1MiB")
    add_option(serve, "--max-queue", "most requests waiting", type=positive_int, default="1024")
    add_option(
        serve,
        "--header-timeout",
        "seconds a client has to send a request head",
        type=positive_float,
        default="10",
    )
    add_option(
        serve,
        "--body-timeout",
        "seconds a client has to send a request body once its head arrived",
        type=positive_float,
        default="30",
    )
    add_option(
        serve,
        "--grace-seconds",
        "on SIGTERM, how long the running request may go on",
        type=positive_int,
        default="10",
    )
    add_option(
        serve,
        "--max-connections",
        "most connections served at once, more get 503 (default: 90%% of the open-file limit)",
        type=positive_int,
    )
    add_option(
        serve,
        "--request-log",
        "append one JSON line per finished request to this file (block names, token counts, "
        "times; never text or token ids) for `prefixkv simulate`",
    )
    _batch_options(serve)
    levels = ["critical", "error", "warning", "info", "debug"]
    add_option(serve, "--log-level", "server log level", type=one_of(levels), default="info")
    serve.set_defaults(run=serve_command)
    chat = commands.add_parser("chat", help="interactive terminal chat showing cache hits")
    _engine_options(chat)
    add_option(chat, "--system", "system prompt")
    add_option(chat, "--max-tokens", "tokens per reply", type=positive_int, default="256")
    add_option(chat, "--temperature", "sampling temperature (0: greedy)", type=float, default="0")
    chat.set_defaults(run=_chat)
    _explain_parser(commands)
    simulate.add_parser(commands)
    warm.add_parser(commands)
    key = commands.add_parser("tier-key", help="write a new tier key file (mode 0600)")
    key.add_argument("file", help="the file to create (never overwritten)")
    key.set_defaults(run=write_tier_key)
    bench = commands.add_parser("bench", help="benchmarks; `prefixkv bench NAME --help`")
    bench.add_argument("name", choices=sorted(BENCHES), help=_bench_help())
    bench.set_defaults(run=lambda args: run_bench(args.name, []))
    return parser


def _explain_parser(commands: Any) -> None:
    explain = commands.add_parser(
        "explain", help="ask a running server why a prompt would (not) hit its cache"
    )
    explain.add_argument("prompt", nargs="?", help="the prompt text (or use --messages)")
    add_option(explain, "--messages", "a JSON file of chat messages (or a chat request body)")
    add_option(explain, "--url", "the server", default="http://127.0.0.1:8000")
    add_option(explain, "--api-key", "the caller's key (its tenant's cache)", secret=True)
    add_option(explain, "--salt", "the request's cache_salt")
    add_option(explain, "--json", "print the server's JSON answer", action="flag")
    # offline: a request log replayed (simulate's replay) instead of a server asked
    add_option(explain, "--log", "explain offline against this request log (serve --request-log)")
    add_option(explain, "--model", "with --log: the server's model (its tokenizer)",
               default="smollm2")  # fmt: skip
    add_option(explain, "--cache-bytes", "with --log: the RAM cache size to replay at",
               type=parse_bytes, default="2GiB")  # fmt: skip
    add_option(explain, "--policy", "with --log: the eviction policy to replay with",
               type=one_of(["lru", "lfu"]), default="lru")  # fmt: skip
    add_option(explain, "--disk-cache-bytes", "with --log: a disk tier below RAM (default: none)",
               type=parse_bytes)  # fmt: skip
    explain.set_defaults(run=_explain)


def _explain(args: argparse.Namespace) -> int:
    if args.log is not None:
        from prefixkv.cli.explain_offline import offline_command

        return offline_command(args)
    from prefixkv.cli.explain import explain_command

    return explain_command(args)


def _bench_help() -> str:
    return "; ".join(f"{name}: {text}" for name, (_, text) in sorted(BENCHES.items()))


def run_bench(name: str, argv: list[str]) -> int:
    """Run ``prefixkv bench NAME ARGS...`` through the benchmark module's ``main(argv)``."""
    module_name = BENCHES[name][0]
    try:
        for extra in _BENCH_EXTRAS.get(name, ()):
            require(extra, f"prefixkv bench {name}")
        module = importlib.import_module(module_name)
    except MissingExtraError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"prefixkv bench {name}: {module_name} is not installed", file=sys.stderr)
        return 2
    return int(module.main(argv))


def _chat(args: argparse.Namespace) -> int:
    from prefixkv.cli.chat import chat_loop
    from prefixkv.threads import compute_on, current_threads

    if args.threads:
        compute_on(args.threads)  # the chat runs the model on this thread
    engine = load_engine(args, current_threads()).engine
    try:
        return chat_loop(
            engine, system=args.system, max_tokens=args.max_tokens, temperature=args.temperature
        )
    finally:
        close_tiers(engine)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prefixkv`` script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if len(args_list) >= 2 and args_list[0] == "bench" and args_list[1] in BENCHES:
        return run_bench(args_list[1], args_list[2:])
    args = build_parser().parse_args(args_list)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    logging.getLogger("prefixkv").setLevel(getattr(args, "log_level", "info").upper())
    try:
        return int(args.run(args))
    except CommandError as exc:
        print(f"prefixkv {args.command}: {exc}", file=sys.stderr)
        return 2
    except MissingExtraError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
