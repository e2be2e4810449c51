"""From the options to the composition root (:mod:`prefixkv.engine.build`): the checks made
before the model loads (tier keys, stores), the settings record, and errors as CommandError."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prefixkv.extras import require

if TYPE_CHECKING:
    from prefixkv.engine.batch.records import BatchLimits, StepReport
    from prefixkv.engine.build import Built, EngineSettings
    from prefixkv.engine.engine import Engine
    from prefixkv.tiers.key import TierKey

KEY_VARIABLE = "PREFIXKV_TIER_KEY"
"""The tier key itself (64 hex digits); there is no option for it: argv is public."""


class CommandError(Exception):
    """A problem with the command's inputs: printed without a traceback, exit status 2."""


def check_tier_options(args: argparse.Namespace) -> TierKey | None:
    """Refuse tier options that cannot work, before the model loads (seconds): a bad URL, a
    bad or unsafe key file, a shared store without a key (unless ``--tier-insecure``).
    Returns the tier key, if one is given."""
    if args.no_prefix_cache and (args.disk_cache or args.redis_url):
        raise CommandError(
            "--disk-cache and --redis-url need the prefix cache (drop --no-prefix-cache)"
        )
    if not (args.disk_cache or args.redis_url):
        return None
    require("tiers", "--disk-cache and --redis-url")
    if args.redis_url:
        from prefixkv.tiers.redis import check_url

        try:
            check_url(args.redis_url)
        except ValueError as exc:
            raise CommandError(f"--redis-url: {exc}") from exc
    key = tier_key(args)
    if key is None and not args.tier_insecure:
        from prefixkv.tiers.build import shared_stores
        from prefixkv.tiers.policy import refusal

        shared = shared_stores(args.disk_cache, args.redis_url)
        if shared:
            raise CommandError(refusal(shared))
    return key


def tier_key(args: argparse.Namespace) -> TierKey | None:
    """The key of ``--tier-key-file`` or of ``PREFIXKV_TIER_KEY`` (not both), or None.
    CommandError naming the source and the fix, never the key."""
    from prefixkv.tiers.key import TierKey, TierKeyError

    text = os.environ.get(KEY_VARIABLE)
    if text is not None and args.tier_key_file:
        raise CommandError(f"give the tier key once: {KEY_VARIABLE} or --tier-key-file, not both")
    try:
        if args.tier_key_file:
            return TierKey.from_file(args.tier_key_file)
        return None if text is None else TierKey.from_text(text, KEY_VARIABLE)
    except TierKeyError as exc:
        raise CommandError(str(exc)) from None


def write_tier_key(args: argparse.Namespace) -> int:
    """``prefixkv tier-key FILE``: a fresh key in a new file, mode 0600."""
    require("tiers", "prefixkv tier-key")
    from prefixkv.tiers.key import write_key_file

    try:
        write_key_file(args.file)
    except FileExistsError:
        raise CommandError(f"{args.file} exists; a key file is never overwritten") from None
    except OSError as exc:
        raise CommandError(f"cannot write {args.file}: {exc.strerror}") from None
    print(f"wrote a new tier key to {args.file} (mode 0600); use --tier-key-file {args.file}")
    return 0


def engine_settings(
    args: argparse.Namespace, threads: int, key: TierKey | None, tenant_share: float | None
) -> EngineSettings:
    """The composition root's record of what the options describe (``prefixkv chat`` has no
    batching options: it runs serially). ``threads``: the cores the runner computes on;
    ``key``: the tier key (see :func:`check_tier_options`). ValueError for an unknown
    eviction policy."""
    from prefixkv.engine.batch.records import BatchLimits
    from prefixkv.engine.build import EngineSettings, TierSettings
    from prefixkv.index import policy_by_name

    tiers = None
    if args.disk_cache or args.redis_url:
        tiers = TierSettings(
            disk_dir=args.disk_cache,
            disk_bytes=args.disk_cache_bytes,
            redis_url=args.redis_url,
            compression=args.tier_compression,
            key=key,
            insecure=args.tier_insecure,
        )
    batching = getattr(args, "backend", "serial") == "batch"
    return EngineSettings(
        model=args.model,
        linear_kernel=args.linear_kernel,
        weights=args.weights,
        activations=args.activations,
        cache="none" if args.no_prefix_cache else "ram",
        cache_bytes=args.cache_bytes,
        block_size=args.block_size,
        eviction_policy=policy_by_name(args.eviction_policy),
        tenant_share=tenant_share,
        tiers=tiers,
        backend="batch" if batching else "serial",
        attention_kernel=args.attention_kernel if batching else "auto",
        limits=_limits(args) if batching else BatchLimits(),
        threads=threads,
        canary_rate=getattr(args, "canary_rate", 0.0) if batching else 0.0,
    )


def _limits(args: argparse.Namespace) -> BatchLimits:
    """The batch runner's limits and admission policy from ``prefixkv serve``'s options."""
    from prefixkv.engine.batch.policy import POLICIES
    from prefixkv.engine.batch.records import BatchLimits

    return BatchLimits(args.max_running, args.max_batch_tokens, POLICIES[args.schedule_policy])


def load_engine(
    args: argparse.Namespace,
    threads: int,
    tenant_share: float | None = None,
    on_step: Callable[[StepReport], None] = lambda report: None,
) -> Built:
    """The engine and runner the options describe, built once (see
    :mod:`prefixkv.engine.build`); the runner computes on ``threads`` cores (named in the
    tier records' fingerprint) and reports each step to ``on_step``. CommandError for
    options that cannot work."""
    from prefixkv.engine.build import build

    key = check_tier_options(args)
    with command_errors():
        return build(engine_settings(args, threads, key, tenant_share), on_step)


@contextlib.contextmanager
def command_errors() -> Iterator[None]:
    """Turn what building an engine raises for bad inputs into CommandError: a missing
    model, a cache too small for a block, a kernel that cannot run, a bad tier option."""
    from prefixkv.engine.loader import ModelNotFoundError
    from prefixkv.kernels.build import NativeUnavailable

    try:
        yield
    except NativeUnavailable as exc:  # --attention-kernel native where it cannot run
        raise CommandError(f"--attention-kernel native: {exc}") from exc
    except (ModelNotFoundError, ValueError, RuntimeError) as exc:
        raise CommandError(str(exc)) from exc


def close_tiers(engine: Engine) -> None:
    """Let the cache write what it has queued for lower tiers, then close them."""
    engine.cache.shutdown()
