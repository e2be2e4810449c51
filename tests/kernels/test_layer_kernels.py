"""The native kernel's RMS norm and SiLU * up: transformers' results up to rounding, every row
the same in any call, and swapped into Llama layers only."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from prefixkv.engine.fused import join_siblings
from prefixkv.engine.native_layers import (
    NativeGatedMLP,
    NativeRMSNorm,
    swap_native_layers,
)
from prefixkv.engine.native_linear import NativeLinear
from prefixkv.models import family_of
from tests.engine.tiny import tiny_llama
from tests.kernels.loaded import loaded


def _rows(gen: torch.Generator, rows: int, width: int, scale: float) -> torch.Tensor:
    return torch.randn(rows, width, generator=gen) * scale


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 100),  # hidden size: whole and partial vectors of 16
    st.integers(1, 12),  # rows
    st.sampled_from([1e-3, 1.0, 300.0]),
    st.integers(0, 2**16),
)
def test_rms_norm_matches_llama_and_each_row_alone(
    dim: int, rows: int, scale: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    norm = LlamaRMSNorm(dim, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(dim, generator=gen))
    native = NativeRMSNorm.llama(norm, loaded())
    x = _rows(gen, rows + 2, dim, scale)
    with torch.inference_mode():
        got = native(x[1 : rows + 1])
        torch.testing.assert_close(got, norm(x[1 : rows + 1]), rtol=1e-5, atol=1e-6)
        alone = torch.cat([native(x[i : i + 1]) for i in range(1, rows + 1)])
        assert torch.equal(got, alone)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 100),  # intermediate size
    st.integers(1, 12),
    st.sampled_from([0.1, 3.0, 60.0]),  # 60: e^-|g| far below float's range for some lanes
    st.integers(0, 2**16),
)
def test_silu_mul_matches_torch_and_each_row_alone(
    width: int, rows: int, scale: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    joined = _rows(gen, rows, 2 * width, scale)
    mlp = NativeGatedMLP(torch.nn.Identity(), torch.nn.Identity(), width, loaded())
    with torch.inference_mode():
        got = mlp(joined)
        gate, up = joined[:, :width], joined[:, width:]
        want = torch.nn.functional.silu(gate) * up
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)
        assert torch.equal(got, torch.cat([mlp(joined[i : i + 1]) for i in range(rows)]))


def test_strided_and_leading_dimensions() -> None:
    norm = LlamaRMSNorm(24)
    native = NativeRMSNorm.llama(norm, loaded())
    x = torch.randn(2, 5, 48)[..., ::2]  # [2, 5, 24], not contiguous
    with torch.inference_mode():
        torch.testing.assert_close(native(x), norm(x), rtol=1e-5, atol=1e-6)
        mlp = NativeGatedMLP(torch.nn.Identity(), torch.nn.Identity(), 12, loaded())
        got = mlp(x)
        want = torch.nn.functional.silu(x[..., :12]) * x[..., 12:]
        assert got.shape == (2, 5, 12)
        torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)


def test_the_native_kernel_swaps_llama_norms_and_mlps_and_keeps_the_logits() -> None:
    model = tiny_llama(seed=3)
    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    with torch.inference_mode():
        before = model(ids).logits
        NativeLinear().install(model)
        after = model(ids).logits
    kinds = [type(m) for m in model.modules()]
    layers = model.config.num_hidden_layers
    assert kinds.count(NativeRMSNorm) == 2 * layers + 1  # two per layer and the final norm
    assert kinds.count(NativeGatedMLP) == layers
    assert LlamaRMSNorm not in kinds and LlamaMLP not in kinds
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert torch.equal(after.argmax(-1), before.argmax(-1))


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_an_mlp_with_another_activation_keeps_its_own(act: str) -> None:
    model = tiny_llama(seed=4)
    for layer in model.model.layers:
        layer.mlp.act_fn = {"gelu": torch.nn.GELU(), "relu": torch.nn.ReLU()}[act]
    family = family_of(model)
    join_siblings(model, family.siblings)
    swapped = swap_native_layers(model, family, loaded())
    assert (swapped.norms, swapped.mlps) == (2 * model.config.num_hidden_layers + 1, 0)
    assert sum(isinstance(m, LlamaMLP) for m in model.modules()) == model.config.num_hidden_layers


def test_an_mlp_whose_projections_are_not_joined_keeps_its_own() -> None:
    model = tiny_llama(seed=5)
    swap_native_layers(model, family_of(model), loaded())
    assert not any(isinstance(m, NativeGatedMLP) for m in model.modules())


BAD_INPUTS = [
    pytest.param(torch.float64, "cpu", id="float64"),
    pytest.param(torch.bfloat16, "cpu", id="bfloat16"),
    pytest.param(torch.float16, "cpu", id="float16"),
    pytest.param(torch.float32, "meta", id="meta"),
]


@pytest.mark.parametrize(("dtype", "device"), BAD_INPUTS)
def test_norm_and_mlp_refuse_another_dtype_or_device(dtype: torch.dtype, device: str) -> None:
    x = torch.randn(3, 24, dtype=dtype, device=device)
    named = f"not {dtype} on {device}.*--linear-kernel torch"
    with pytest.raises(TypeError, match=f"^NativeRMSNorm: .*{named}"):
        NativeRMSNorm.llama(LlamaRMSNorm(24), loaded())(x)
    mlp = NativeGatedMLP(torch.nn.Identity(), torch.nn.Identity(), 12, loaded())
    with pytest.raises(TypeError, match=f"^NativeGatedMLP: .*{named}"):
        mlp(x)


def test_norm_and_mlp_refuse_another_last_dimension() -> None:
    with pytest.raises(ValueError, match=r"^x: shape \(3, 23\) does not end in weight's 24"):
        NativeRMSNorm.llama(LlamaRMSNorm(24), loaded())(torch.randn(3, 23))
    mlp = NativeGatedMLP(torch.nn.Identity(), torch.nn.Identity(), 12, loaded())
    with pytest.raises(ValueError, match=r"^gate_up: shape \(3, 23\) does not end in 2 \* width"):
        mlp(torch.randn(3, 23))


def test_a_norm_of_another_dtype_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"^NativeRMSNorm: .*not torch\.bfloat16"):
        NativeRMSNorm.llama(LlamaRMSNorm(8).bfloat16(), loaded())


def test_a_native_model_under_autocast_says_so() -> None:
    """Under torch.autocast the attention between the native layers computes in bfloat16: the
    first native layer to get it refuses, naming autocast, instead of writing 4-byte floats
    into a 2-byte buffer."""
    model = tiny_llama(seed=6)
    NativeLinear().install(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    refused = pytest.raises(TypeError, match=r"torch\.autocast to torch\.bfloat16 is on")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), refused:
        model(ids)
