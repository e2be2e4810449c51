"""The ``prefixkv`` command: ``serve``, ``chat`` and ``bench``.

Every option has an environment variable ``PREFIXKV_<OPTION>`` (dashes become underscores);
an option given on the command line wins over its variable. Heavy imports (torch,
transformers, FastAPI) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefixkv.engine.engine import Engine

BENCHES = {
    "index": ("prefixkv.bench.index_ops", "prefix index operations (lookup, insert, evict)"),
    "ttft": ("prefixkv.bench.ttft", "time to first token with and without the prefix cache"),
    "serve": ("prefixkv.bench.serve_load", "concurrent clients against the HTTP server"),
}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def parse_bytes(text: str) -> int:
    """``2GiB``, ``512MiB``, ``1G``, ``64k`` or a plain integer, as a number of bytes;
    ValueError for anything else.

    K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; KB/MB/GB/TB are powers of 1000.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text, re.IGNORECASE)
    if match is None or (match.group(3).lower() == "ib" and not match.group(2)):
        raise ValueError(f"not a size: {text!r} (try 2GiB, 512MiB or 1000000)")
    number, prefix, suffix = match.group(1), match.group(2).lower(), match.group(3).lower()
    base = 1000 ** " kmgt".index(prefix) if suffix == "b" else _UNITS[prefix]
    return int(float(number) * base)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class CommandError(Exception):
    """A problem with the command's inputs: printed without a traceback, exit status 2."""


class _EnvText(str):
    """A default taken from an environment variable; remembers which, for error messages."""

    env = ""


def _checked(convert: Any) -> Any:
    """``convert`` for argparse, naming the environment variable when its value is bad."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            where = f"{text.env}={text!r}" if isinstance(text, _EnvText) else repr(text)
            raise argparse.ArgumentTypeError(f"invalid value {where}: {exc}") from exc

    return parse


def _one_of(choices: list[str]) -> Any:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text.lower()

    return parse


def _parse_bool(text: str) -> bool:
    if text.strip().lower() not in _TRUE + _FALSE:
        raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE[:-1])}")
    return text.strip().lower() in _TRUE


class _Flag(argparse.Action):
    """``store_true`` whose default may come from the environment (parsed by ``type``)."""

    def __init__(self, option_strings: Any, dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, True)


class _ReplaceThenAppend(argparse.Action):
    """``append``, except that the first use on the command line drops the environment's
    list instead of adding to it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        items = getattr(namespace, self.dest)
        items = [] if items is self.default else list(items)
        setattr(namespace, self.dest, [*items, values])


def add_option(
    parser: argparse.ArgumentParser, flag: str, help: str, secret: bool = False, **kwargs: Any
) -> None:
    """Add ``flag``, its default overridden by ``PREFIXKV_<FLAG>`` when that is set. The
    variable is parsed (by ``type``) only if this command runs, so a bad one in the
    environment cannot break another command. ``action="flag"`` is a boolean switch whose
    variable reads 1/true/yes/on or 0/false/no/off; ``secret`` keeps the value out of --help.
    Benchmarks use this too, so every ``prefixkv`` option follows the same rule."""
    env = "PREFIXKV_" + flag.lstrip("-").upper().replace("-", "_")
    value = os.environ.get(env)
    if kwargs.get("action") == "flag":
        kwargs.update(action=_Flag, type=_parse_bool, default=False)
    if value is not None and kwargs.get("action") is _ReplaceThenAppend:
        kwargs["default"] = [item.strip() for item in value.split(",") if item.strip()]
    elif value is not None:
        kwargs["default"] = _EnvText(value)
        kwargs["default"].env = env
    if "type" in kwargs:
        kwargs["type"] = _checked(kwargs["type"])
    hidden = secret or kwargs.get("action") is _Flag or kwargs.get("default") is None
    shown = "" if hidden else " (%(default)s)"
    parser.add_argument(flag, help=f"{help}{shown} [env {env}]", **kwargs)


def _engine_options(p: argparse.ArgumentParser) -> None:
    add_option(p, "--model", "model: 'smollm2', a model folder or a .gguf file", default="smollm2")
    add_option(p, "--cache-bytes", "prefix cache size", type=parse_bytes, default="2GiB")
    add_option(p, "--block-size", "tokens per cache block", type=_positive_int, default="16")
    add_option(p, "--no-prefix-cache", "disable the prefix cache (baseline)", action="flag")
    add_option(p, "--threads", "torch CPU threads (default: torch's choice)", type=_positive_int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefixkv", description="Exact prefix KV-cache reuse for LLM inference."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="OpenAI-compatible server with a prefix cache")
    _engine_options(serve)
    add_option(serve, "--host", "address to bind", default="127.0.0.1")
    add_option(serve, "--port", "TCP port", type=int, default="8000")
    add_option(
        serve,
        "--api-key",
        "required bearer key; repeat for several tenants (env: comma-separated)",
        secret=True,
        action=_ReplaceThenAppend,
        default=[],
    )
    add_option(
        serve, "--max-tokens-limit", "largest max_tokens", type=_positive_int, default="2048"
    )
    add_option(
        serve, "--default-max-tokens", "max_tokens when unset", type=_positive_int, default="256"
    )
    add_option(serve, "--max-body-bytes", "largest request body", type=parse_bytes, default="1MiB")
    add_option(serve, "--max-queue", "most requests waiting", type=_positive_int, default="1024")
    levels = ["critical", "error", "warning", "info", "debug"]
    add_option(serve, "--log-level", "server log level", type=_one_of(levels), default="info")
    serve.set_defaults(run=_serve)
    chat = commands.add_parser("chat", help="interactive terminal chat showing cache hits")
    _engine_options(chat)
    add_option(chat, "--system", "system prompt")
    add_option(chat, "--max-tokens", "tokens per reply", type=_positive_int, default="256")
    add_option(chat, "--temperature", "sampling temperature (0: greedy)", type=float, default="0")
    chat.set_defaults(run=_chat)
    bench = commands.add_parser("bench", help="benchmarks; `prefixkv bench NAME --help`")
    bench.add_argument("name", choices=sorted(BENCHES), help=_bench_help())
    bench.set_defaults(run=lambda args: run_bench(args.name, []))
    return parser


def _bench_help() -> str:
    return "; ".join(f"{name}: {text}" for name, (_, text) in sorted(BENCHES.items()))


def run_bench(name: str, argv: list[str]) -> int:
    """Run ``prefixkv bench NAME ARGS...`` through the benchmark module's ``main(argv)``."""
    module_name = BENCHES[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"prefixkv bench {name}: {module_name} is not installed", file=sys.stderr)
        return 2
    return int(module.main(argv))


def load_engine(args: argparse.Namespace) -> Engine:
    """The Engine the options describe; ``--no-prefix-cache`` puts it over a NullCache."""
    import torch

    from prefixkv.engine.engine import Engine
    from prefixkv.engine.loader import ModelNotFoundError
    from prefixkv.null_cache import NullCache

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        engine = Engine.from_pretrained(
            args.model, cache_bytes=args.cache_bytes, block_size=args.block_size
        )
    except (ModelNotFoundError, ValueError) as exc:  # ValueError: a cache too small for a block
        raise CommandError(str(exc)) from exc
    if args.no_prefix_cache:
        engine = engine.with_cache(NullCache(engine.layout, args.block_size))
    return engine


def _serve(args: argparse.Namespace) -> int:
    from prefixkv.server import ServerSettings, create_app, serve
    from prefixkv.server.run import is_loopback

    engine = load_engine(args)
    settings = ServerSettings(
        model_names=(engine.name, args.model),
        api_keys=tuple(args.api_key),
        max_body_bytes=args.max_body_bytes,
        default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        max_queue=args.max_queue,
    )
    if not is_loopback(args.host) and not settings.api_keys:
        print(f"warning: serving on {args.host} without --api-key", file=sys.stderr)
    cache = "off" if args.no_prefix_cache else f"{args.cache_bytes / (1 << 30):.2f} GiB"
    print(
        f"prefixkv: serving {engine.name} at http://{args.host}:{args.port}/v1 "
        f"(prefix cache {cache}, blocks of {args.block_size} tokens)",
        flush=True,
    )
    return serve(create_app(engine, settings), args.host, args.port, log_level=args.log_level)


def _chat(args: argparse.Namespace) -> int:
    from prefixkv.server.terminal import chat_loop

    engine = load_engine(args)
    return chat_loop(
        engine, system=args.system, max_tokens=args.max_tokens, temperature=args.temperature
    )


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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
