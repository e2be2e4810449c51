"""The linear kernels: oneDNN's products equal nn.Linear's up to float rounding, every layer
is swapped, ``auto`` picks native here and is the default everywhere. That an engine on each
kernel is exact with and without the cache, serial or batched, is the exactness matrix
(tests/engine/kernel_matrix.py) of tests/engine/test_engine.py and
tests/engine/batch/test_runner.py."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest
import torch

from prefixkv.engine import linear, native_linear
from prefixkv.engine.batch.runner import BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.kvbridge import layout_of
from prefixkv.engine.linear import (
    OneDNNLinear,
    PackedLinear,
    TorchLinear,
    kernel_of,
    linear_kernel,
    linear_layers,
    padded_rows,
    padding_of,
    row_bucket,
)
from prefixkv.engine.native_linear import NativeLinear
from prefixkv.kernels.build import NativeUnavailable

from . import kernel_matrix
from .kernel_matrix import ATTENTION_KERNELS, LINEAR_KERNELS, unavailable
from .tiny import tiny_llama


@pytest.fixture
def onednn() -> None:
    """Skips (fails under PREFIXKV_REQUIRE_KERNELS=1) where PyTorch has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        unavailable("PyTorch built without oneDNN")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (2, 5, 48)])
def test_packed_linear_matches_nn_linear(onednn: None, bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    plain = torch.nn.Linear(48, 80, bias=bias)
    packed = PackedLinear(plain)
    x = torch.randn(*shape)
    with torch.inference_mode():
        want, got = plain(x), packed(x)
    assert got.shape == want.shape == (*shape[:-1], 80)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(packed.weight.to_dense(), plain.weight.detach())


@pytest.mark.parametrize(
    ("rows", "bucket"),
    [
        (1, 1),
        (3, 4),
        (8, 8),
        (9, 16),
        (17, 24),
        (39, 40),
        (64, 64),
        (65, 128),
        (200, 256),
        (512, 512),
    ],
)
def test_rows_are_padded_to_few_buckets(rows: int, bucket: int) -> None:
    assert row_bucket(rows) == bucket


def test_the_padding_a_model_pays_follows_its_kernel(onednn: None) -> None:
    """What the batch planner fills (:func:`padding_of`): buckets under oneDNN, split into
    MAX_ROWS pieces; nothing under PyTorch's kernel."""
    assert [padded_rows(n) for n in (1, 200, 512, 513, 1100)] == [1, 256, 512, 513, 1152]
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    assert padding_of(model)(200) == 200
    OneDNNLinear().install(model)
    assert padding_of(model) is padded_rows


@pytest.mark.parametrize("rows", [5, 100, 512, 513, 1200])
def test_padded_and_split_calls_give_each_row_its_product(onednn: None, rows: int) -> None:
    """Zero rows pad a call to its bucket and calls past MAX_ROWS run in pieces; neither
    shows in the result."""
    torch.manual_seed(1)
    plain = torch.nn.Linear(32, 24)
    packed = PackedLinear(plain)
    x = torch.randn(rows, 32)
    with torch.inference_mode():
        got = packed(x)
        assert got.shape == (rows, 24)
        torch.testing.assert_close(got, plain(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[:5], packed(x[:5]), rtol=1e-5, atol=1e-5)


KERNELS = [OneDNNLinear, NativeLinear]


def installed(kernel: type[Any], model: Any) -> int:
    """``kernel().install(model)``; skips (fails under the switch) where it cannot run."""
    try:
        swapped: int = kernel().install(model)
    except RuntimeError as exc:
        unavailable(f"{kernel.name} linear layers cannot run here: {exc}")
    return swapped


@pytest.mark.parametrize("kernel", KERNELS)
def test_install_swaps_every_linear_layer_and_keeps_the_logits(kernel: type[Any]) -> None:
    model = tiny_llama()
    layers = len(model.model.layers)
    before = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ids = torch.tensor([[5, 9, 14, 20, 7, 33]])
    with torch.inference_mode():
        want = model(input_ids=ids).logits
    # q/k/v and gate/up of each layer joined (tests/engine/test_fused.py): 3 fewer a layer.
    assert installed(kernel, model) == len(before) - 3 * layers > 0
    assert kernel_of(model) == kernel.name
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert len(linear_layers(model)) == len(before) - 3 * layers
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_auto_picks_native_then_onednn_for_float32_cpu_and_torch_otherwise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(linear_kernel("auto", tiny_llama()), NativeLinear)
    assert isinstance(linear_kernel("torch", tiny_llama()), TorchLinear)
    assert isinstance(linear_kernel("onednn", tiny_llama()), OneDNNLinear)
    half = tiny_llama().to(torch.bfloat16)
    assert isinstance(linear_kernel("auto", half), TorchLinear)
    for name in ("onednn", "native"):
        with pytest.raises(RuntimeError, match="float32 CPU weights"):
            linear_kernel(name, half).install(half)
    with pytest.raises(ValueError, match="unknown linear kernel 'mkl'"):
        linear_kernel("mkl", half)

    def no_compiler() -> None:
        raise NativeUnavailable("no C compiler found (install gcc, or set CC)")

    monkeypatch.setattr(linear, "load", no_compiler)
    with caplog.at_level(logging.WARNING, logger="prefixkv.engine"):
        assert isinstance(linear_kernel("auto", tiny_llama()), OneDNNLinear)
    assert "no C compiler" in caplog.text


def test_auto_is_the_default_wherever_an_engine_is_built() -> None:
    """The matrix's ``auto`` column (tests/engine/kernel_matrix.py, which also checks that it
    resolves to native here) is what users run: the default of ``Engine.from_pretrained``, of
    ``BatchRunner`` and of ``prefixkv serve``."""
    from prefixkv.cli.commands import build_parser

    assert inspect.signature(Engine.from_pretrained).parameters["linear_kernel"].default == "auto"
    assert inspect.signature(BatchRunner).parameters["attention_kernel"].default == "auto"
    args = build_parser().parse_args(["serve"])
    assert (args.linear_kernel, args.attention_kernel) == ("auto", "auto")
    assert "auto" in LINEAR_KERNELS and "auto" in ATTENTION_KERNELS


def test_the_fingerprint_names_the_kernel() -> None:
    """Through the weights alone (the rest of the arithmetic held the same)."""
    pytest.importorskip("xxhash")
    from prefixkv.engine.fingerprint import Arithmetic, model_fingerprint

    same = Arithmetic("batch:torch", "none", "this platform", 1)
    plain = tiny_llama()
    lay = layout_of(plain.config, torch.float32)
    prints = [model_fingerprint(plain, lay, same)]
    for kernel in KERNELS:
        packed, again = tiny_llama(), tiny_llama()
        installed(kernel, packed)
        installed(kernel, again)
        assert model_fingerprint(packed, lay, same) == model_fingerprint(again, lay, same)
        prints.append(model_fingerprint(packed, lay, same))
    assert len(set(prints)) == 3  # plain, oneDNN and native KV never mix


@pytest.mark.parametrize("name", ["auto", "native"])
@pytest.mark.parametrize("required", [False, True], ids=["skips", "fails-when-required"])
def test_a_kernel_that_cannot_run_skips_the_matrix_or_fails_it_when_required(
    monkeypatch: pytest.MonkeyPatch, name: str, required: bool
) -> None:
    """Where the native library does not build, ``native`` cannot install and ``auto`` falls
    back to oneDNN: the matrix's tests on either skip, saying why, or fail under the switch."""

    def no_compiler() -> None:
        raise NativeUnavailable("no C compiler found (install gcc, or set CC)")

    monkeypatch.setattr(linear, "load", no_compiler)
    monkeypatch.setattr(native_linear, "load", no_compiler)
    if required:
        monkeypatch.setenv(kernel_matrix.REQUIRE, "1")
    else:
        monkeypatch.delenv(kernel_matrix.REQUIRE, raising=False)
    # Both caught, so that a skip where a failure is due fails this test instead of skipping it.
    ended = (pytest.fail.Exception, pytest.skip.Exception)
    with pytest.raises(ended) as raised:
        kernel_matrix.kernel_llama(name)
    assert raised.type is (pytest.fail.Exception if required else pytest.skip.Exception)
    assert "no C compiler" in str(raised.value) and repr(name) in str(raised.value)
