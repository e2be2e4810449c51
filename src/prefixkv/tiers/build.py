"""Build a TieredCache from the server's options (``--disk-cache``, ``--redis-url``,
``--tier-compression``)."""

from __future__ import annotations

from pathlib import Path

from prefixkv.cache.paged import PrefixKVCache
from prefixkv.tiers.codec import BlockCodec, RawCodec
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
) -> TieredCache:
    """``hot`` with a disk tier (if ``disk_dir``) and a Redis tier (if ``redis_url``) below
    it, in that order. Raises ValueError for a malformed URL or compression; an unreachable
    Redis or an unusable directory only degrades its tier."""
    tiers: list[Tier] = []
    if disk_dir is not None:
        from prefixkv.tiers.disk import DiskTier

        tiers.append(DiskTier(disk_dir, disk_bytes))
    if redis_url is not None:
        from prefixkv.tiers.redis import RedisTier

        tiers.append(RedisTier(redis_url))
    return TieredCache(hot, tiers, model_fingerprint, codec=codec_named(compression))
