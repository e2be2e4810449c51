"""The integer-dot formats (``--activations q8``: q8_0.q8, q4_0.q8, q4_1.q8): the native
kernel equals the plain numpy reference (prefixkv.kernels.int8) bit for bit on whatever path
this build has (AVX512-VNNI with -march=native here; the generic C path under
``make test-kernels-avx2``), every row the same alone or in any call; the layout is a
permutation of the base format's bytes; and the result stays within the activations'
quantization error of the float32 one. Block bytes and joined siblings are checked here for
the K-quants' integer formats too."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from prefixkv.kernels import formats, int_layout
from prefixkv.kernels.formats import PackedWeight, concat, unpack
from prefixkv.kernels.int8 import quantize_rows, reference_tensor, to_int_dot
from tests.kernels.loaded import loaded
from tests.kernels.test_linear_formats import random_packed
from tests.kernels.test_linear_int8_k import BASES as KQUANT_BASES
from tests.kernels.test_linear_int8_k import int_packed as kquant_int_packed

BASES = ("q8_0", "q4_0", "q4_1")  # the K-quants': test_linear_int8_k.py


def int_packed(base: str, out: int, in_features: int, seed: int) -> PackedWeight:
    return to_int_dot(random_packed(base, out, in_features, seed))


def test_this_build_runs_the_path_its_cpu_has() -> None:
    """-march=native takes AVX512-VNNI where the CPU has it, else AVX2 where it has that;
    x86-64-v3 (make test-kernels-avx2) AVX2; plain x86-64 the generic C path."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    march = os.environ.get("PREFIXKV_KERNEL_MARCH", "native")
    if march == "native":
        vnni = {"avx512_vnni", "avx512bw"} <= flags
        want = "vnni" if vnni else "avx2" if "avx2" in flags else "generic"
    else:
        want = {"x86-64-v3": "avx2", "x86-64": "generic"}.get(march, loaded().int8_path)
    assert loaded().int8_path == want


@pytest.mark.parametrize("base", BASES)
@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 5),  # in features / 32
    st.integers(1, 150),  # out features
    st.lists(st.integers(1, 40), min_size=1, max_size=3),  # rows of successive calls
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_kernel_equals_the_reference_and_every_row_is_the_same_in_any_call(
    base: str, groups: int, out: int, counts: list[int], bias: bool, seed: int
) -> None:
    packed = int_packed(base, out, groups * 32, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(max(counts) + 5, groups * 32, generator=gen)
    x[0, :32] = 0.0  # an all-zero group
    x[-1] *= 1e3
    b = torch.randn(out, generator=gen) if bias else None
    kernels = loaded()
    alone = torch.cat([kernels.linear(x[i : i + 1], packed, b) for i in range(len(x))])
    assert torch.equal(alone.view(torch.int32), reference_tensor(x, packed, b).view(torch.int32))
    for start, count in enumerate(counts):
        got = kernels.linear(x[start : start + count], packed, b)
        assert torch.equal(got.view(torch.int32), alone[start : start + count].view(torch.int32))


@pytest.mark.parametrize("base", BASES)
def test_many_rows_and_wide_rows_equal_the_reference(base: str) -> None:
    """Past the kernel's chunk of 32 rows, and in features of a real model's size."""
    packed = int_packed(base, 130, 2048, seed=7)
    x = torch.randn(70, 2048)
    got = loaded().linear(x, packed, None)
    assert torch.equal(got.view(torch.int32), reference_tensor(x, packed, None).view(torch.int32))


@pytest.mark.parametrize("base", BASES)
@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(1, 130), st.integers(0, 2**32 - 1))
def test_the_result_is_within_the_activations_rounding_of_float32(
    base: str, groups: int, out: int, seed: int
) -> None:
    """|y_q8 - x W^T| <= sum over k of |w_k| d_x / 2 (each activation within half its group's
    step), plus float32 rounding; the float32 kernel computes x W^T."""
    packed = int_packed(base, out, groups * 32, seed)
    x = torch.randn(3, groups * 32, generator=torch.Generator().manual_seed(seed))
    dense = unpack(packed).double()  # [out, in]
    _, d, _ = quantize_rows(x.numpy())
    steps = torch.from_numpy(d).double().repeat_interleave(32, dim=1) / 2  # [rows, in]
    bound = steps @ dense.abs().T
    exact = x.double() @ dense.T
    slack = 1e-5 * (x.double().abs() @ dense.abs().T) + 1e-30
    got = loaded().linear(x, packed, None).double()
    assert ((got - exact).abs() <= bound + slack).all()


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, (3, 64), elements=st.floats(-1e6, 1e6, width=32)))
def test_quantized_rows_are_within_half_a_step_of_the_values(x: np.ndarray) -> None:
    q, d, sums = quantize_rows(x)
    groups = x.reshape(3, 2, 32).astype(np.float64)
    assert np.abs(q.astype(np.int64)).max() <= 127
    assert np.array_equal(sums, q.sum(axis=-1, dtype=np.int64))
    tiny = np.abs(groups).max(axis=-1) < 1e-30
    assert (d[tiny] == 0).all() and (q[tiny] == 0).all()
    error = np.abs(groups - q * d[..., None].astype(np.float64))
    assert (error <= d[..., None] * 0.5000001 + 1e-30 * tiny[..., None]).all()


@pytest.mark.parametrize("base", BASES)
@settings(max_examples=10, deadline=None)
@given(st.integers(1, 130), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_the_layout_is_a_permutation_of_the_base_formats_bytes(
    base: str, out: int, groups: int, seed: int
) -> None:
    plain = random_packed(base, out, groups * 32, seed)
    packed = to_int_dot(plain)
    assert packed.format == int_layout.INT_DOT[base]
    assert packed.data.shape == plain.data.shape
    assert packed.nbytes == plain.nbytes
    assert torch.equal(int_layout.restore(base, packed.data), plain.data)
    assert torch.equal(unpack(packed), unpack(plain))


def _siblings(base: str) -> tuple[list[PackedWeight], int, int]:
    """Three random weights of ``base``'s integer-dot format (70, 30 and 64 outputs), their
    input features, and a width whose block bytes to check."""
    if base in BASES:
        return [int_packed(base, n, 64, seed) for seed, n in enumerate((70, 30, 64))], 64, 96
    parts = [kquant_int_packed(base, n, 1, seed) for seed, n in enumerate((70, 30, 64))]
    return parts, 256, 512


@pytest.mark.parametrize("base", BASES + KQUANT_BASES)
def test_block_bytes_and_joined_siblings(base: str) -> None:
    name = int_layout.INT_DOT[base]
    parts, k, width = _siblings(base)
    assert loaded().linear_block_bytes(name, width) == formats.block_bytes(base, width)
    joined = concat(parts)
    assert (joined.format, joined.out_features) == (name, 164)
    x = torch.randn(5, k)
    want = torch.cat([loaded().linear(x, p, None) for p in parts], dim=1)
    assert torch.equal(loaded().linear(x, joined, None), want)


def test_the_door_checks_an_integer_format_as_any_other() -> None:
    packed = int_packed("q4_0", 70, 64, seed=3)
    with pytest.raises(TypeError, match="x: the native kernels take a float32 CPU tensor"):
        loaded().linear(torch.randn(2, 64, dtype=torch.float64), packed, None)
    with pytest.raises(ValueError, match="x: 48 features, the weight takes 64"):
        loaded().linear(torch.randn(2, 48), packed, None)
    short = PackedWeight(packed.format, 64, 70, packed.data[:, :-1].contiguous())
    with pytest.raises(ValueError, match=r"^weight.data: shape \(2, \d+\) does not hold 70 x 64"):
        loaded().linear(torch.randn(2, 64), short, None)
    with pytest.raises(ValueError, match=r"q4_0\.q8: in_features 48 is not a multiple of 32"):
        formats.block_bytes("q4_0.q8", 48)
    with pytest.raises(KeyError):
        to_int_dot(random_packed("f32", 3, 32, 0))
