"""The check every packed format's linear kernel must pass, shared by the format tests."""

from __future__ import annotations

import torch

from prefixkv.kernels.formats import PackedWeight, pack_f32, unpack
from tests.kernels.loaded import loaded


def check_against_f32(packed: PackedWeight, counts: list[int], bias: bool, seed: int) -> None:
    """The kernel on ``packed`` equals, bit for bit, the f32 kernel on its dequantized weight,
    for every row alone and in calls of ``counts`` rows (past 18 rows a call is staged, past
    48 it runs k whole); and is near ``x @ W.T`` in float64."""
    kernels, in_features, out = loaded(), packed.in_features, packed.out_features
    dense = unpack(packed)
    reference = pack_f32(dense)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(max(counts) + 20, in_features, generator=gen)
    b = torch.randn(out, generator=gen) if bias else None
    alone = torch.cat([kernels.linear(x[i : i + 1], packed, b) for i in range(len(x))])
    assert torch.equal(alone, kernels.linear(x, reference, b))
    assert torch.equal(alone, kernels.linear(x, packed, b))
    for start, count in enumerate(counts):
        rows = x[start : start + count]
        assert torch.equal(kernels.linear(rows, packed, b), alone[start : start + count])
        assert torch.equal(kernels.linear(rows, reference, b), alone[start : start + count])
    want = x.double() @ dense.double().T + (0 if b is None else b.double())
    scale = (x.double().abs() @ dense.double().abs().T).max().item() + 1.0
    torch.testing.assert_close(alone.double(), want, rtol=0, atol=1e-5 * scale)
