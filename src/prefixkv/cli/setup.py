"""Building what the options describe: the engine over its cache (RAM only, no cache, or
with disk and Redis tiers below RAM) and the server's backend."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from prefixkv.extras import require

if TYPE_CHECKING:
    from prefixkv.engine.engine import Engine


class CommandError(Exception):
    """A problem with the command's inputs: printed without a traceback, exit status 2."""


def check_tier_options(args: argparse.Namespace) -> None:
    """Refuse tier options that cannot work, before the model loads (seconds)."""
    if args.no_prefix_cache and (args.disk_cache or args.redis_url):
        raise CommandError(
            "--disk-cache and --redis-url need the prefix cache (drop --no-prefix-cache)"
        )
    if args.disk_cache or args.redis_url:
        require("tiers", "--disk-cache and --redis-url")
    if args.redis_url:
        from prefixkv.tiers.redis import check_url

        try:
            check_url(args.redis_url)
        except ValueError as exc:
            raise CommandError(f"--redis-url: {exc}") from exc


def load_engine(args: argparse.Namespace, tenant_share: float | None = None) -> Engine:
    """The Engine the options describe; ``--no-prefix-cache`` puts it over a NullCache."""
    from prefixkv.cache.null import NullCache
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.loader import ModelNotFoundError
    from prefixkv.index import policy_by_name

    check_tier_options(args)
    try:
        engine = Engine.from_pretrained(
            args.model,
            cache_bytes=args.cache_bytes,
            block_size=args.block_size,
            policy=policy_by_name(args.eviction_policy),
            tenant_share=tenant_share,
            linear_kernel=args.linear_kernel,
        )
    # ValueError: a cache too small for a block; RuntimeError: a linear kernel that cannot
    # run this model's weights.
    except (ModelNotFoundError, ValueError, RuntimeError) as exc:
        raise CommandError(str(exc)) from exc
    if args.no_prefix_cache:
        # A pool of the same size still holds running requests' KV when batching.
        capacity = args.cache_bytes if getattr(args, "backend", "serial") == "batch" else 0
        engine = engine.with_cache(
            NullCache(engine.layout, args.block_size, capacity_bytes=capacity)
        )
    elif args.disk_cache or args.redis_url:
        engine = engine.with_cache(_tiered(args, engine))
    return engine


def _tiered(args: argparse.Namespace, engine: Engine) -> Any:
    """The engine's RAM cache with the disk and Redis tiers the options ask for."""
    from prefixkv.cache.paged import PrefixKVCache
    from prefixkv.engine.fingerprint import model_fingerprint
    from prefixkv.tiers.build import build_tiered

    assert isinstance(engine.cache, PrefixKVCache)
    try:
        return build_tiered(
            engine.cache,
            model_fingerprint(engine.model, engine.layout),
            disk_dir=args.disk_cache,
            disk_bytes=args.disk_cache_bytes,
            redis_url=args.redis_url,
            compression=args.tier_compression,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def make_backend(args: argparse.Namespace, engine: Engine, threads: int) -> Any:
    """The server backend the options ask for: the batch runner, or the serial worker (also
    the fallback, with a warning, for a model the batch runner cannot run); its thread runs
    the model's ops on ``threads`` cores."""
    from prefixkv.engine.batch.policy import POLICIES
    from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
    from prefixkv.engine.kvbridge import UnsupportedModelError
    from prefixkv.kernels.build import NativeUnavailable
    from prefixkv.server.backends import BatchBackend, SerialBackend

    if args.backend == "serial":
        return SerialBackend(engine, threads)
    limits = BatchLimits(args.max_running, args.max_batch_tokens, POLICIES[args.schedule_policy])
    try:
        runner = BatchRunner(engine, limits, attention_kernel=args.attention_kernel)
    except UnsupportedModelError as exc:
        print(f"warning: {exc}; serving one request at a time", file=sys.stderr)
        return SerialBackend(engine, threads)
    except NativeUnavailable as exc:  # --attention-kernel native where it cannot run
        raise CommandError(f"--attention-kernel native: {exc}") from exc
    return BatchBackend(runner, threads)


def close_tiers(engine: Engine) -> None:
    """Let a TieredCache write what it has queued, then close its tiers."""
    shutdown = getattr(engine.cache, "shutdown", None)
    if shutdown is not None:
        shutdown()
