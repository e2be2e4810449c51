"""The connector's settings (``kv_connector_extra_config``), its tiers, and the model
fingerprint its records are named and verified by.

Keys of ``kv_connector_extra_config``:

- ``disk_dir`` (str): a directory for the disk tier (kept across restarts);
- ``disk_bytes`` (int, default 16 GiB): the disk tier's capacity;
- ``redis_url`` (str): a Redis server shared by replicas (``redis://`` or ``rediss://``);
- ``tier_key_file`` (str): the tier key sealing records (AES-256-GCM) and keying block
  names; else ``PREFIXKV_TIER_KEY_FILE`` or ``PREFIXKV_TIER_KEY`` in the environment;
- ``insecure`` (bool): accept unsealed records in a shared store (as ``--tier-insecure``).

At least one of ``disk_dir`` and ``redis_url``. The policy is prefixkv's
(:mod:`prefixkv.tiers.policy`): a shared store (Redis, always) needs a key or ``insecure``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import xxhash

from prefixkv.tiers.key import TierKey
from prefixkv.tiers.naming import SEED, fingerprint_of
from prefixkv.tiers.policy import check_policy
from prefixkv.tiers.protocol import Tier

_KEYS = ("disk_dir", "disk_bytes", "redis_url", "tier_key_file", "insecure")
_CHUNK = 16 << 20
REDIS_TIMEOUT = 2.0
"""Seconds a Redis call may take: a load reads a prompt's blocks in one MGET, and one
block of vLLM's (128 tokens of every layer) is megabytes; well above loopback's ~50 ms for
SmolLM2's 30 MB prompt of 700 tokens, so a slow answer is a miss, not a stall."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class ConnectorSettings:
    disk_dir: str | None
    disk_bytes: int
    redis_url: str | None
    tier_key_file: str | None
    insecure: bool


def parse_settings(extra: Mapping[str, object]) -> ConnectorSettings:
    """The settings in ``extra``; ValueError naming the key for anything unknown or of the
    wrong type, or for no store at all."""
    unknown = sorted(set(extra) - set(_KEYS))
    if unknown:
        raise ValueError(
            f"kv_connector_extra_config: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})"
        )
    disk_bytes = extra.get("disk_bytes", 16 << 30)
    if isinstance(disk_bytes, bool) or not isinstance(disk_bytes, int) or disk_bytes < 1:
        raise ValueError(
            f"kv_connector_extra_config.disk_bytes: a positive int, got {disk_bytes!r}"
        )
    insecure = extra.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ValueError(f"kv_connector_extra_config.insecure: true or false, got {insecure!r}")
    settings = ConnectorSettings(
        _text(extra, "disk_dir"), disk_bytes, _text(extra, "redis_url"),
        _text(extra, "tier_key_file"), insecure,
    )  # fmt: skip
    if settings.disk_dir is None and settings.redis_url is None:
        raise ValueError("kv_connector_extra_config: give disk_dir or redis_url (or both)")
    return settings


def _text(extra: Mapping[str, object], key: str) -> str | None:
    value = extra.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"kv_connector_extra_config.{key}: a non-empty string, got {value!r}")
    return value


def tier_key(settings: ConnectorSettings) -> TierKey | None:
    """The key of ``tier_key_file``, else of the environment, else None."""
    path = settings.tier_key_file or os.environ.get("PREFIXKV_TIER_KEY_FILE")
    if path:
        return TierKey.from_file(path)
    text = os.environ.get("PREFIXKV_TIER_KEY")
    return None if not text else TierKey.from_text(text, "PREFIXKV_TIER_KEY")


def open_tiers(settings: ConnectorSettings, key: TierKey | None) -> list[Tier]:
    """The disk tier then the Redis tier, as configured; TierPolicyError (a ValueError
    naming the fix) for a shared store without a key unless ``insecure``."""
    tiers: list[Tier] = []
    if settings.disk_dir is not None:
        from prefixkv.tiers.disk import DiskTier

        tiers.append(DiskTier(settings.disk_dir, settings.disk_bytes))
    if settings.redis_url is not None:
        from prefixkv.tiers.redis import RedisTier

        tiers.append(RedisTier(settings.redis_url, timeout=REDIS_TIMEOUT))
    try:
        check_policy(tiers, key, settings.insecure)
    except ValueError:
        for tier in tiers:
            tier.close()
        raise
    return tiers


def weights_digest(folder: Path) -> bytes:
    """XXH3-128 of the folder's config and weight files (names, sizes and bytes, in name
    order): two servers agree on it exactly when they load the same checkpoint. ~0.1 s
    per 500 MB here. ValueError when the folder holds no weights."""
    chosen = sorted(
        p for p in folder.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES)
    )  # fmt: skip
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in chosen):
        raise ValueError(f"{folder}: no weight files to fingerprint the model by")
    digest = xxhash.xxh3_128(seed=SEED)
    for path in chosen:
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.digest()


def machine() -> str:
    """The CPU model and flags: vLLM's CPU kernels dispatch on them, so KV computed on
    another kind of CPU may differ in its last bits and is never shared."""
    model = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            if key.strip() in ("flags", "Features") and not flags:
                flags = value.strip()
    except OSError:
        pass
    return f"{platform.machine()}|{model}|{flags}"


def connector_fingerprint(weights: bytes, versions: str, dtype: str, kv_specs: str) -> bytes:
    """16 bytes naming what decides the bits of vLLM's KV: the weights, vLLM's and torch's
    versions and its compilation mode (``versions``), the model dtype, the KV cache specs (layers, heads, head size, KV dtype,
    block size) and the machine's CPU."""
    parts = (b"prefixkv-vllm-connector-v1", weights, versions.encode(), dtype.encode())
    return fingerprint_of(*parts, kv_specs.encode(), machine().encode())
