"""``prefixkv serve``: the checks made before the model loads (keys, who may connect), the
start-up banner, and the server run until a stop signal."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from prefixkv.cli.options import EnvText
from prefixkv.cli.setup import KEY_VARIABLE, CommandError, close_tiers, load_engine
from prefixkv.heap import HeapTrimmer

HEAP_TRIM_SECONDS = 30.0
"""How often a server gives freed heap memory back (:mod:`prefixkv.heap`): without it, RSS
rose in steps under `prefixkv bench soak`; a call is cheap next to the interval, and the
pages it frees that are needed again are faulted back in once per interval."""

if TYPE_CHECKING:
    from prefixkv.engine.build import Built
    from prefixkv.events.publisher import KVEventPublisher
    from prefixkv.server import ServerSettings
    from prefixkv.server.request_log import RequestLog


def secret_keys(values: list[str], flag: str) -> tuple[str, ...]:
    """Keys with surrounding blanks stripped; CommandError naming the flag (or variable), never
    the value, for an empty or blank one (an unset secret must never start a server without
    auth) or one with a character an HTTP client cannot send in a header (not printable
    ASCII: such a key could never match)."""
    keys = []
    for value in values:
        source = f"{value.env}" if isinstance(value, EnvText) else flag
        if not value.strip():
            raise CommandError(f"{source} holds an empty key; give a key or leave it unset")
        if not all(" " <= char <= "~" for char in value.strip()):
            raise CommandError(
                f"{source} holds a key with a character other than printable ASCII "
                "(the key is not shown)"
            )
        keys.append(value.strip())
    return tuple(keys)


def check_access(host: str, keyed: bool, allow_anonymous: bool) -> None:
    """Fail closed: CommandError for a server bound to ``host`` other than loopback without
    any key, unless ``allow_anonymous``; and for ``allow_anonymous`` with keys (which would
    refuse the anonymous callers it asks for). Prints a warning for an anonymous server
    reachable by other machines."""
    from prefixkv.server.hosts import is_loopback

    if allow_anonymous and keyed:
        raise CommandError(
            "--allow-anonymous serves callers without a key; it cannot go with --api-key or "
            "--admin-key (callers without a key would be refused)"
        )
    if keyed or is_loopback(host):
        return
    if not allow_anonymous:
        raise CommandError(
            f"refusing to serve on {host} without a key: anyone who reaches it could use it. "
            "Give --api-key (and --admin-key for /metrics and whole-cache views), or "
            "--allow-anonymous to serve without keys anyway"
        )
    print(
        f"warning: serving on {host} without keys (--allow-anonymous): anyone who reaches "
        "it may use it; /metrics, whole-cache views and a global reset need keys",
        file=sys.stderr,
    )


def serve_command(args: argparse.Namespace) -> int:
    """Run the server the options describe; the exit status. CommandError (exit 2) for bad
    keys, a server on the network without one, or options that cannot work."""
    from prefixkv.server import create_app
    from prefixkv.server.steps import StepMetrics

    # Checked before the model loads (seconds): a bad key or a server open to the network
    # without one is a start-up error at once.
    api_keys = secret_keys(args.api_key, "--api-key")
    admin = secret_keys([] if args.admin_key is None else [args.admin_key], "--admin-key")
    check_access(args.host, bool(api_keys or admin), args.allow_anonymous)
    _check_request_log(args.request_log)
    from prefixkv.threads import current_threads, helper_thread

    # The backend's thread runs the model on every core; this one only loads it (see
    # prefixkv.threads: a second multi-threaded team would slow every step).
    threads = args.threads or current_threads()
    helper_thread()
    steps = StepMetrics()
    built = load_engine(args, threads, args.tenant_share, steps.observe)
    engine = built.engine
    settings = server_settings(args, engine.name, api_keys, admin)
    print(banner(args, engine.name), flush=True)
    events = _kv_events(args, built, threads)
    request_log = _request_log(args, engine)
    app = create_app(engine, settings, built.runner, steps, threads, request_log, built.canary)
    if events is not None:
        from prefixkv.events.serving import EventsCollector

        app.state.prefixkv.metrics.registry.register(EventsCollector(events.counts))
    trimmer = HeapTrimmer(HEAP_TRIM_SECONDS).start()
    try:
        return _run_server(app, args)
    finally:
        trimmer.stop()
        close_tiers(engine)
        if events is not None:
            events.close()


def _kv_events(args: argparse.Namespace, built: Built, threads: int) -> KVEventPublisher | None:
    """The publisher ``--kv-events`` asks for, reporting the cache from now on (None without
    it). CommandError for a cache that keeps nothing or an endpoint that cannot be bound."""
    if args.kv_events is None:
        if args.kv_events_replay is not None:
            raise CommandError("--kv-events-replay needs --kv-events")
        return None
    import zmq

    from prefixkv.events.serving import publish_events

    try:
        return publish_events(built, threads, args.kv_events, args.kv_events_replay)
    except ValueError as exc:
        raise CommandError(f"--kv-events: {exc} (drop --no-prefix-cache)") from exc
    except zmq.ZMQError as exc:
        raise CommandError(f"--kv-events: cannot bind its endpoints: {exc}") from exc


def _check_request_log(path: str | None) -> None:
    """CommandError at once (before the model loads) for a request log that cannot be
    opened for appending."""
    if path:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        except OSError as exc:
            raise CommandError(f"--request-log {path}: {exc.strerror}") from exc


def _request_log(args: argparse.Namespace, engine: Any) -> RequestLog | None:
    """The ``--request-log`` writer (closed with the app), or None without the option."""
    if not args.request_log:
        return None
    from prefixkv.server.request_log import RequestLog, namer_for

    cache = engine.cache
    try:
        return RequestLog(
            args.request_log, namer_for(cache, engine.name), cache.geometry.block_bytes
        )
    except OSError as exc:
        raise CommandError(f"--request-log {args.request_log}: {exc.strerror}") from exc


def server_settings(
    args: argparse.Namespace, model: str, api_keys: tuple[str, ...], admin: tuple[str, ...]
) -> ServerSettings:
    """What the HTTP layer enforces, from the options; ``/metrics`` is public only on a
    server without keys bound to loopback (see :mod:`prefixkv.server.auth`). Pure."""
    from prefixkv.server import ServerSettings
    from prefixkv.server.hosts import default_allowed_hosts, is_loopback

    return ServerSettings(
        model_names=(model, args.model),
        api_keys=api_keys,
        admin_keys=admin,
        allowed_hosts=tuple(args.allowed_host) or default_allowed_hosts(args.host),
        max_body_bytes=args.max_body_bytes,
        default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        max_queue=args.max_queue,
        public_metrics=not (api_keys or admin) and is_loopback(args.host),
    )


def banner(args: argparse.Namespace, model: str) -> str:
    """The start-up line: what is served where, over which cache (a Redis URL's password
    hidden). Pure."""
    from prefixkv.redaction import redacted_url

    cache = "off" if args.no_prefix_cache else f"{args.cache_bytes / (1 << 30):.2f} GiB"
    if args.disk_cache:
        cache += f" + disk {args.disk_cache} ({args.disk_cache_bytes / (1 << 30):.2f} GiB)"
    if args.redis_url:
        cache += f" + redis {redacted_url(args.redis_url)}"
    if args.disk_cache or args.redis_url:
        cache += f", {_sealing(args)}"
    events = "" if args.kv_events is None else f"; KV events on {args.kv_events}"
    if args.kv_events_replay is not None:
        events += f", replay on {args.kv_events_replay}"
    return (
        f"prefixkv: serving {model} at http://{args.host}:{args.port}/v1 "
        f"(prefix cache {cache}, blocks of {args.block_size} tokens, {_batching(args)}{events})"
    )


def _run_server(app: Any, args: argparse.Namespace) -> int:
    from prefixkv.server import serve
    from prefixkv.server.app import begin_shutdown

    return serve(
        app,
        args.host,
        args.port,
        log_level=args.log_level,
        grace_seconds=args.grace_seconds,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        on_stop=lambda grace: begin_shutdown(app, grace),
    )


def _sealing(args: argparse.Namespace) -> str:
    """How tier records are kept, for the banner (never the key)."""
    if args.tier_key_file or KEY_VARIABLE in os.environ:
        return "tier records sealed (AES-256-GCM)"
    if args.tier_insecure:
        return "tier records NOT sealed (--tier-insecure)"
    return "tier records unsealed (private directory)"


def _batching(args: argparse.Namespace) -> str:
    if args.backend == "serial":
        return "one request at a time"
    return (
        f"batching up to {args.max_running} requests, {args.max_batch_tokens} tokens per step, "
        f"{args.schedule_policy}"
    )
