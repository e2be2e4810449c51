"""Part of case (a) of ``prefixkv bench tiers``: what sealing costs one block's record.

Per seal (a checksum without a key; AES-256-GCM with one), the median seconds of
``record.encode`` (what the tier writer does per block) and ``record.verify`` (what a
restore does per block, before decoding) on one block of the engine's layout with random
KV. The restore rows *disk-sealed* / *redis-sealed* show the cost on a whole prefix.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from prefixkv.cache.layout import KVLayout
from prefixkv.tiers import record
from prefixkv.tiers.codec import RawCodec, block_shape
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.seal import AeadSeal, ChecksumSeal, Seal


def seal_costs(
    layout: KVLayout, block_size: int, key: TierKey, repeats: int = 200
) -> list[dict[str, Any]]:
    """One row per seal: payload bytes, encode and verify medians (ms) and GB/s."""
    payload = RawCodec().encode(torch.randn(block_shape(layout, block_size)).to(layout.dtype))
    tokens = bytes(4 * block_size)
    expected = record.Expected(bytes(16), bytes(16), bytes(16), tokens)
    rows = []
    seals: list[Seal] = [ChecksumSeal(), AeadSeal(key)]
    for seal in seals:
        encode, verify = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            raw = record.encode(seal, 0, bytes(16), bytes(16), bytes(16), tokens, payload)
            middle = time.perf_counter()
            record.verify(raw, expected, seal)
            verify.append(time.perf_counter() - middle)
            encode.append(middle - start)
        e, v = statistics.median(encode), statistics.median(verify)
        rows.append({"seal": seal.name, "payload_bytes": len(payload), "encode_ms": 1e3 * e,
                     "verify_ms": 1e3 * v, "encode_gb_per_s": len(payload) / e / 1e9,
                     "verify_gb_per_s": len(payload) / v / 1e9})  # fmt: skip
    return rows


def seal_line(row: dict[str, Any]) -> str:
    return (
        f"tiers seal      {row['seal']:<11} one block of {row['payload_bytes']:,} B: encode "
        f"{row['encode_ms']:.3f} ms ({row['encode_gb_per_s']:.1f} GB/s), verify "
        f"{row['verify_ms']:.3f} ms ({row['verify_gb_per_s']:.1f} GB/s)"
    )
