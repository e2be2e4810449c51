"""Quantise float rows to GGUF's K-quant blocks (Q4_K, Q5_K, Q6_K), which gguf-py reads but
cannot write: for :mod:`prefixkv.bench.model_gguf`'s ``q4_k_m`` and ``q5_k_m`` models.

A simple min/max choice per sub-block, not llama.cpp's error-minimising search: the blocks
are valid and their values near the input (within about one quantisation step), which is
all a random benchmark model needs; the kernels' exactness does not depend on it (they
reproduce whatever the blocks say). Rows are ``[n, cols]`` float32 with ``cols % 256 == 0``.
"""

from __future__ import annotations

import numpy as np

SUPER = 256  # weights per super-block
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")


def quantize_k(values: np.ndarray, kind: str) -> np.ndarray:
    """``values`` float32 ``[n, cols]`` (cols a multiple of 256) as ``kind``'s blocks: uint8
    ``[n, cols / 256 * (144, 176 or 210)]``, the bytes gguf's reader and ``dequantize``
    take. ValueError for another kind or a width that is not a multiple of 256."""
    if kind not in K_TYPES:
        raise ValueError(f"kind: one of {K_TYPES} expected, got {kind!r}")
    if values.ndim != 2 or values.shape[1] % SUPER:
        raise ValueError(f"values: [n, a multiple of {SUPER}] expected, got {values.shape}")
    n = values.shape[0]
    supers = values.reshape(-1, SUPER).astype(np.float32)  # [n * S, 256]
    blocks = _q6_k(supers) if kind == "Q6_K" else _q45_k(supers, 15 if kind == "Q4_K" else 31)
    return blocks.reshape(n, -1)


def _fp16_scale(wanted: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """A super-block's fp16 scale for sub-block scales ``wanted`` (``[B, subs]``, >= 0) on
    integers ``0..steps``, and those integers (``[B, subs]``), rounded up so that no
    sub-block's range is cut."""
    top = wanted.max(axis=1, keepdims=True) / steps
    d = top.astype(np.float16)
    d = np.where(d.astype(np.float32) < top, np.nextafter(d, np.float16(np.inf)), d)
    wide = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ints = np.where(wide > 0, np.ceil(wanted / wide), 0)
    return d[:, 0], np.clip(ints, 0, steps).astype(np.uint8)


def _q45_k(supers: np.ndarray, levels: int) -> np.ndarray:
    """Q4_K (levels 15) or Q5_K (31) blocks of ``supers`` ``[B, 256]``: ``[B, 144 | 176]``."""
    subs = supers.reshape(-1, 8, 32)
    low = np.minimum(subs.min(axis=2), 0)  # the offset subtracted: -dmin * m, m >= 0
    d, sc = _fp16_scale((subs.max(axis=2) - low) / levels, 63)
    dmin, m = _fp16_scale(-low, 63)
    step = (d.astype(np.float32)[:, None] * sc)[..., None]  # [B, 8, 1]
    shift = (dmin.astype(np.float32)[:, None] * m)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step > 0, np.rint((subs + shift) / step), 0)
    q = np.clip(q, 0, levels).astype(np.uint8).reshape(-1, 4, 2, 32)  # [B, chunk, half, 32]
    scales = np.concatenate(
        [(sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6), (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6),
         (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)], axis=1)  # fmt: skip
    qs = ((q[:, :, 0] & 15) | ((q[:, :, 1] & 15) << 4)).reshape(-1, 128)
    parts = [d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), scales]
    if levels == 31:  # bit i of qh[j]: the 5th bit of element 32 i + j
        fifth = (q.reshape(-1, 8, 32) >> 4).astype(np.uint8)
        parts.append((fifth << np.arange(8, dtype=np.uint8)[:, None]).sum(1, dtype=np.uint8))
    return np.concatenate([*parts, qs], axis=1)


def _q6_k(supers: np.ndarray) -> np.ndarray:
    """Q6_K blocks of ``supers`` ``[B, 256]``: ``[B, 210]`` (ql, qh, int8 scales, fp16 d)."""
    subs = supers.reshape(-1, 16, 16)
    peak = np.abs(subs).max(axis=2) / 31  # the step that keeps every value in -31..31
    d, sc = _fp16_scale(peak, 127)
    step = (d.astype(np.float32)[:, None] * sc)[..., None]  # [B, 16, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step > 0, np.rint(subs / step), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)  # [B, half, s, 32]
    ql = (q[:, :, :2] & 15) | ((q[:, :, 2:] & 15) << 4)  # [B, half, 2, 32]: element + 64
    qh = ((q >> 4) << (2 * np.arange(4, dtype=np.uint8))[:, None]).sum(2, dtype=np.uint8)
    parts = [ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(np.int8).view(np.uint8),
             d[:, None].view(np.uint8)]  # fmt: skip
    return np.concatenate(parts, axis=1)
