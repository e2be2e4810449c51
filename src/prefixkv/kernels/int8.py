"""The integer-dot path's Python side: weights put in its layout, and the plain reference
every native path (AVX512-VNNI, AVX2, generic C) must equal bit for bit.

``--activations q8`` (:mod:`prefixkv.engine.activations`) runs GGUF's ``q8_0``, ``q4_0``,
``q4_1`` and K-quant (``q4_k``, ``q5_k``, ``q6_k``) weights as llama.cpp does: each input row is quantized to 8 bits per group of
32 (one float32 scale a group), and each group's dot product is an exact integer sum before
one float32 scaling. What is computed, operation by operation, is specified in
``csrc/linear_int8.h`` (the K-quants' in ``csrc/linear_int8_k.h``); :func:`reference_linear`
computes the same in numpy float32 and integers (the K-quants' sums:
:mod:`prefixkv.kernels.int8_kquants`). Each row is quantized on its own and every output is summed over the groups in
one order, so results do not depend on the rows a call holds (batch invariance), but they
differ from the float32 activations' (the activations are rounded).
"""

from __future__ import annotations

import numpy as np
import torch

from prefixkv.kernels.formats import PackedWeight, planes_of
from prefixkv.kernels.int8_kquants import reference_sums
from prefixkv.kernels.int_layout import BASE, GROUP, INT_DOT, reorder
from prefixkv.kernels.kquants import K_FORMATS

QUANT_TINY = np.float32(1e-30)  # a group with max |x| below it quantizes to zeros
_OFFSET = {"q8_0": 0, "q4_0": 8, "q4_1": 0}  # w = d * (q - offset) (+ m), q as planes hold it
_F32 = np.float32


def to_int_dot(weight: PackedWeight) -> PackedWeight:
    """``weight`` (q8_0, q4_0, q4_1 or a K-quant) in its integer-dot format: a new PackedWeight of the
    same bytes reordered. KeyError for another format."""
    base = weight.format
    return PackedWeight(INT_DOT[base], weight.in_features, weight.out_features,
                        reorder(base, weight.data))  # fmt: skip


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float32 ``x`` ``[rows, k]`` (k a multiple of 32) as ``(q, d, sums)``: int8 ``[rows,
    k / 32, 32]``, float32 and int32 ``[rows, k / 32]`` (csrc/linear_int8.h). Pure."""
    groups = np.asarray(x, dtype=_F32).reshape(x.shape[0], -1, GROUP)
    amax = np.abs(groups).max(axis=-1)
    tiny = ~(amax >= QUANT_TINY)
    safe = np.where(tiny, _F32(1), amax)
    inv = np.where(tiny, _F32(0), _F32(127) / safe)
    values = np.clip(groups * inv[..., None], _F32(-127), _F32(127))
    q = np.rint(values).astype(np.int8)
    d = np.where(tiny, _F32(0), safe / _F32(127)).astype(_F32)
    return q, d, q.sum(axis=-1, dtype=np.int32)


def reference_linear(x: np.ndarray, weight: PackedWeight, bias: np.ndarray | None) -> np.ndarray:
    """What the kernel computes for ``x`` (float32 ``[rows, in]``) against an integer-dot
    ``weight``: float32 ``[rows, out]``, each group's term added in order, then the bias."""
    base, tensors = BASE[weight.format], planes_of(weight)
    q, dx, sums = quantize_rows(x)
    if base in K_FORMATS:
        acc = reference_sums(base, tensors, q, dx, sums)
        return acc if bias is None else acc + np.asarray(bias, dtype=_F32)[None]
    planes = {name: plane.numpy() for name, plane in tensors.items()}
    wq = planes["q"].astype(np.int64) - _OFFSET[base]  # [out, groups, 32]
    isum = np.einsum("rgk,ogk->rog", q.astype(np.int64), wq)  # exact
    scale = planes["d"].astype(_F32)[None] * dx[:, None, :]  # [rows, out, groups]
    terms = isum.astype(_F32) * scale
    shifts = dx * sums.astype(_F32)  # [rows, groups]
    acc = np.zeros(terms.shape[:2], dtype=_F32)
    for g in range(terms.shape[2]):
        acc = acc + terms[..., g]
        if base == "q4_1":
            acc = acc + planes["m"].astype(_F32)[None, :, g] * shifts[:, None, g]
    return acc if bias is None else acc + np.asarray(bias, dtype=_F32)[None]


def reference_tensor(x: torch.Tensor, weight: PackedWeight,
                     bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """:func:`reference_linear` on tensors (float32, CPU): a new tensor."""
    out = reference_linear(x.numpy(), weight, None if bias is None else bias.numpy())
    return torch.from_numpy(np.ascontiguousarray(out))
