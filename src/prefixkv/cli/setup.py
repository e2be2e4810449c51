"""Building what the options describe: the engine over its cache (RAM only, no cache, or
with disk and Redis tiers below RAM) and what runs its requests."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from prefixkv.extras import require

if TYPE_CHECKING:
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.role import Runner
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


class BackendChoice(NamedTuple):
    """What will compute the KV, decided once from the options and the model: the tier
    records' fingerprint names it, and :func:`make_runner` builds it."""

    backend: str
    """``batch`` or ``serial``."""
    attention: str
    """The fingerprint's attention (:attr:`prefixkv.engine.fingerprint.Arithmetic.attention`):
    ``batch:native``, ``batch:torch`` or ``serial:<the model's own>``."""


def choose_backend(args: argparse.Namespace, engine: Engine) -> BackendChoice:
    """The batch runner with the attention kernel ``--attention-kernel`` resolves to, or the
    serial engine (asked for, or the fallback, with a warning, for a model the batch runner
    cannot run). Raises CommandError for ``--attention-kernel native`` where it cannot run."""
    from prefixkv.engine.batch import attention, kernels
    from prefixkv.engine.fingerprint import serial_attention
    from prefixkv.engine.kvbridge import UnsupportedModelError
    from prefixkv.kernels.build import NativeUnavailable

    if getattr(args, "backend", "serial") == "serial":  # prefixkv chat has no --backend
        return BackendChoice("serial", serial_attention(engine.model))
    try:
        with engine.model_lock:  # the probe switches the model's attention for a moment
            attention.check_supported(engine.model)
    except UnsupportedModelError as exc:
        print(f"warning: {exc}; serving one request at a time", file=sys.stderr)
        return BackendChoice("serial", serial_attention(engine.model))
    layout = engine.layout
    heads = int(engine.model.config.num_attention_heads)
    try:
        kernel = kernels.attention_kernel(
            args.attention_kernel, heads, layout.num_kv_heads, layout.dtype, engine.device
        )
    except NativeUnavailable as exc:  # --attention-kernel native where it cannot run
        raise CommandError(f"--attention-kernel native: {exc}") from exc
    return BackendChoice("batch", f"batch:{kernel.name}")


def load_engine(
    args: argparse.Namespace, threads: int, tenant_share: float | None = None
) -> tuple[Engine, BackendChoice]:
    """The Engine the options describe (``--no-prefix-cache`` puts it over a NullCache;
    ``--disk-cache``/``--redis-url`` add tiers under its RAM cache) and what will compute
    its KV with ``threads`` PyTorch threads (named in the tier records' fingerprint)."""
    from prefixkv.cache.null import NullCache
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.loader import ModelNotFoundError
    from prefixkv.index import policy_by_name

    key = check_tier_options(args)
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
    choice = choose_backend(args, engine)
    if args.no_prefix_cache:
        # A pool of the same size still holds running requests' KV when batching.
        capacity = args.cache_bytes if choice.backend == "batch" else 0
        engine = engine.with_cache(
            NullCache(engine.layout, args.block_size, capacity_bytes=capacity)
        )
    elif args.disk_cache or args.redis_url:
        engine = engine.with_cache(_tiered(args, engine, key, choice, threads))
    return engine, choice


def _tiered(
    args: argparse.Namespace,
    engine: Engine,
    key: TierKey | None,
    choice: BackendChoice,
    threads: int,
) -> Any:
    """The engine's RAM cache with the disk and Redis tiers the options ask for, its records
    named by the weights and by how ``choice`` computes the KV on ``threads`` threads."""
    from prefixkv.cache.paged import PrefixKVCache
    from prefixkv.engine.fingerprint import arithmetic, model_fingerprint
    from prefixkv.tiers.build import build_tiered

    assert isinstance(engine.cache, PrefixKVCache)
    computed = arithmetic(engine.model, choice.attention, threads)
    try:
        return build_tiered(
            engine.cache,
            model_fingerprint(engine.model, engine.layout, computed),
            disk_dir=args.disk_cache,
            disk_bytes=args.disk_cache_bytes,
            redis_url=args.redis_url,
            compression=args.tier_compression,
            key=key,
            insecure=args.tier_insecure,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def make_runner(args: argparse.Namespace, engine: Engine, choice: BackendChoice) -> Runner:
    """The runner ``choice`` names (see :func:`choose_backend`): the engine's serial runner,
    or a batch runner with the options' limits."""
    from prefixkv.engine.batch.policy import POLICIES
    from prefixkv.engine.batch.runner import BatchLimits, BatchRunner

    if choice.backend == "serial":
        return engine.serial
    limits = BatchLimits(args.max_running, args.max_batch_tokens, POLICIES[args.schedule_policy])
    kernel = choice.attention.removeprefix("batch:")  # resolved: auto chose it already
    return BatchRunner(engine, limits, attention_kernel=kernel)


def close_tiers(engine: Engine) -> None:
    """Let the cache write what it has queued for lower tiers, then close them."""
    engine.cache.shutdown()
