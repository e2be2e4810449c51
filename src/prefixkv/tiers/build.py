"""Build a TieredCache from the server's options (``--disk-cache``, ``--redis-url``,
``--tier-compression``, ``--tier-key-file``, ``--tier-insecure``)."""

from __future__ import annotations

from pathlib import Path

from prefixkv.cache.paged import PrefixKVCache
from prefixkv.tiers.codec import BlockCodec, RawCodec
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.protocol import Tier
from prefixkv.tiers.tiered import TieredCache

COMPRESSIONS = ("none", "int8", "int4")


def codec_named(name: str) -> BlockCodec:
    """The codec of a ``--tier-compression`` value; ValueError naming the choices."""
    if name == "none":
        return RawCodec()
    if name not in COMPRESSIONS:
        raise ValueError(f"tier compression must be one of {', '.join(COMPRESSIONS)}, got {name!r}")
    from prefixkv.tiers.quantize import CODECS

    codec: BlockCodec = CODECS[name]
    return codec


def build_tiered(
    hot: PrefixKVCache,
    model_fingerprint: bytes,
    *,
    disk_dir: str | Path | None = None,
    disk_bytes: int = 16 << 30,
    redis_url: str | None = None,
    compression: str = "none",
    key: TierKey | None = None,
    insecure: bool = False,
) -> TieredCache:
    """``hot`` with a disk tier (if ``disk_dir``) and a Redis tier (if ``redis_url``) below
    it, in that order, records sealed with ``key``. Raises ValueError for a malformed URL or
    compression, and TierPolicyError (a ValueError naming the fix) for a shared tier (Redis,
    a disk directory not private to this user) without ``key`` unless ``insecure``; an
    unreachable Redis or an unusable directory only degrades its tier."""
    tiers: list[Tier] = []
    if disk_dir is not None:
        from prefixkv.tiers.disk import DiskTier

        tiers.append(DiskTier(disk_dir, disk_bytes))
    if redis_url is not None:
        from prefixkv.tiers.redis import RedisTier

        tiers.append(RedisTier(redis_url))
    try:
        codec = codec_named(compression)
        return TieredCache(hot, tiers, model_fingerprint, key=key, insecure=insecure, codec=codec)
    except ValueError:
        for tier in tiers:
            tier.close()
        raise


def shared_stores(disk_dir: str | Path | None, redis_url: str | None) -> list[str]:
    """Why each store the options name is shared (see :mod:`prefixkv.tiers.policy`), as
    ``build_tiered`` would find it, without connecting to Redis: for checks before a model
    loads. Creates the disk tier's directory (0700) if missing."""
    reasons = []
    if disk_dir is not None:
        from prefixkv.tiers.disk import DIRECTORY
        from prefixkv.tiers.files import directory_sharing

        reason = directory_sharing(Path(disk_dir) / DIRECTORY)
        reasons += [] if reason is None else [reason]
    if redis_url is not None:
        from prefixkv.tiers.redis import redis_sharing

        reasons.append(redis_sharing(redis_url))
    return reasons
