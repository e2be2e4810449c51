"""The K-quants' integer-dot reference (``q4_k.q8``, ``q5_k.q8``, ``q6_k.q8``): what
``csrc/linear_int8_k.h`` computes, in numpy integers and float32, for
:func:`prefixkv.kernels.int8.reference_linear` to add the bias to.

Per output column and group of 32 input features (sub-block ``j`` of its super-block), an
exact integer ``i`` (q4_k/q5_k: ``sc[j] * sum(u x)``; q6_k: over its two 16-feature
sub-blocks, ``sc * (sum(u x) - 32 * sum(x))``) and for q4_k/q5_k ``n = m[j] * sum(x)``, with
``u`` the unsigned quant and ``x`` the 8-bit activations; then in float32, group by group
in order, ``acc = (acc + i * (d * d_x)) - n * (dmin * d_x)`` (q6_k: without the min term).
Every ``|i|`` is below 2^24, so its float32 value is exact.
"""

from __future__ import annotations

import numpy as np

from prefixkv.kernels.formats import Planes
from prefixkv.kernels.kquants import SUPER

_F32, _I64 = np.float32, np.int64
_GROUPS = SUPER // 32  # groups per super-block


def reference_sums(base: str, planes: Planes, q: np.ndarray, dx: np.ndarray,
                   sums: np.ndarray) -> np.ndarray:  # fmt: skip
    """Float32 ``[rows, out]`` of a K format ``base`` (planes as
    :func:`prefixkv.kernels.kquants.gguf_planes` gives them) against quantized rows ``q``
    (int8 ``[rows, groups, 32]``), ``dx`` and ``sums`` (``[rows, groups]``), before the bias."""
    groups = dx.shape[1]
    d = np.repeat(planes["d"].float().numpy(), _GROUPS, axis=1)  # [out, groups]
    scale = d[None] * dx[:, None, :]  # [rows, out, groups], float32
    xq, wq = q.astype(_I64), planes["q"].numpy().astype(_I64).reshape(-1, groups, 32)
    if base == "q6_k":
        terms, mins = _q6_k_ints(planes, xq, wq).astype(_F32) * scale, None
    else:
        sc = planes["sc"].numpy().astype(_I64).reshape(-1, groups)
        m = planes["m"].numpy().astype(_I64).reshape(-1, groups)
        dmin = np.repeat(planes["dmin"].float().numpy(), _GROUPS, axis=1)
        terms = (sc[None] * np.einsum("rgk,ogk->rog", xq, wq)).astype(_F32) * scale
        mins = (m[None] * sums.astype(_I64)[:, None, :]).astype(_F32) * (dmin[None] * dx[:, None])
    acc = np.zeros(terms.shape[:2], dtype=_F32)
    for g in range(groups):
        acc = acc + terms[..., g]
        if mins is not None:
            acc = acc - mins[..., g]
    return acc


def _q6_k_ints(planes: Planes, xq: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """q6_k's exact integers ``[rows, out, groups]``: over a group's two 16-feature
    sub-blocks, ``sc * (sum(u x) - 32 * sum(x))``."""
    rows, groups = xq.shape[:2]
    halves = xq.reshape(rows, groups, 2, 16)
    dots = np.einsum("rghk,oghk->rogh", halves, wq.reshape(-1, groups, 2, 16))
    sc = planes["sc"].numpy().astype(_I64).reshape(-1, groups, 2)
    result: np.ndarray = (sc[None] * (dots - 32 * halves.sum(-1)[:, None])).sum(-1)
    return result
