"""The kernel behind a model's linear layers: PyTorch's default, oneDNN on weights packed once,
or prefixkv's own (:mod:`prefixkv.engine.native_linear`, the default where it builds).

On CPU, ``F.linear`` hands every call to MKL with the weights in their plain layout. A decode
step multiplies a few rows by every weight of the model, and there MKL runs far above the
weight-read floor. oneDNN with each weight reordered once into its blocked layout (the path
PyTorch's own compiler takes when it freezes a CPU model) runs them faster at every row count
(measured in ``docs/decisions.md``, "Linear layers"; ``prefixkv bench decode`` prints the line).

Its results differ from MKL's at float rounding (about 1e-6 relative). The engine runs one
kernel for every path (cached or not, serial or batched), so outputs stay identical with and
without the cache; :func:`prefixkv.engine.fingerprint.model_fingerprint` names the kernel, so
KV stored below RAM by one kernel is never served to the other. oneDNN's rows also came out
the same whatever the number of rows in the call (except one-row calls of 1536-wide inputs),
where MKL's small calls differed from its large ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol, cast

import torch

from prefixkv.engine.activations import FP32_ACTIVATIONS, Activations
from prefixkv.engine.fused import swap_linears
from prefixkv.engine.native_linear import NativeLinear, NativeLinearLayer, refusal
from prefixkv.engine.weights import AS_LOADED, WeightFormat
from prefixkv.kernels.build import NativeUnavailable
from prefixkv.kernels.ops import load
from prefixkv.models import family_of

log = logging.getLogger("prefixkv.engine")

KERNELS = ("auto", "native", "onednn", "torch")
PACK_ROWS = 64
"""The row count oneDNN packs for: best for 64-512 rows and within 3% of the best at 1 and 16."""
MAX_ROWS = 512
"""Calls of more rows run in pieces of this many."""


def row_bucket(rows: int) -> int:
    """The row count a call of ``rows`` rows (1 to MAX_ROWS) is padded to: 1, 2, 4 or 8, then
    the next multiple of 8 up to 64, then the next multiple of 64 (18 buckets).

    oneDNN keeps per-shape state for every row count it has seen: 600 distinct counts on
    four SmolLM2 shapes grew RSS by 1.2 GB (545 MB even with its primitive cache off), while
    a few buckets cost a bounded amount once (on the tiny test model's server, ~0.5 MiB per
    bucket over its shapes; tests/server/test_memory.py holds 400 requests to 16 MiB). Its
    time grows with the rows it is given (~200 GFLOP/s from 24 to 512 rows here), so
    padding is paid in full: powers of two up to 64 ran a 39-token mixed step (16 decoding
    sequences and a question) as 64 rows. Multiples of 8 there pad by at most 7 rows;
    multiples of 32 past 64 would also have saved a 200-token chunk's 56 padded rows, but
    doubled the buckets and their one-time memory. Rows come out the same whatever the
    bucket (one-row calls of 1536-wide inputs aside, as before)."""
    if rows <= 8:
        return 1 << (rows - 1).bit_length()
    if rows <= 64:
        return -(-rows // 8) * 8
    return -(-rows // 64) * 64


class PackedLinear(torch.nn.Module):
    """``y = x W^T + b`` on oneDNN, ``W`` reordered once into its blocked layout.

    ``weight`` is an opaque oneDNN tensor (a buffer: ``to_dense()`` gives the plain
    ``[out_features, in_features]`` weight back); the plain weight is not kept."""

    weight: torch.Tensor

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., in_features]`` -> ``[..., out_features]``."""
        rows = x.reshape(-1, self.in_features)
        count = rows.shape[0]
        if count > MAX_ROWS:
            pieces = [self._rows(rows[i : i + MAX_ROWS]) for i in range(0, count, MAX_ROWS)]
            out = torch.cat(pieces)
        else:
            out = self._rows(rows)
        return out.view(*x.shape[:-1], self.out_features)

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows``: ``[n, in_features]``, n <= MAX_ROWS, padded with zero rows to its bucket."""
        count = rows.shape[0]
        padded = row_bucket(count)
        if padded != count:
            rows = torch.cat([rows, rows.new_zeros(padded - count, self.in_features)])
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            rows, self.weight, self.bias, "none", [], ""
        )
        return out[:count]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


class LinearKernel(Protocol):
    """How a model's ``nn.Linear`` layers run."""

    name: str

    def install(self, model: torch.nn.Module) -> int:
        """Swap ``model``'s linear layers in place for this kernel's; returns how many were
        swapped. Raises RuntimeError when the kernel cannot run them."""
        ...


class TorchLinear:
    """PyTorch's own ``nn.Linear`` (MKL on CPU, cuBLAS on CUDA): nothing to install."""

    name = "torch"

    def install(self, model: torch.nn.Module) -> int:
        return 0


class OneDNNLinear:
    """:class:`PackedLinear` for every float32 CPU ``nn.Linear`` of the model, sibling
    projections of one input first joined into one (:mod:`prefixkv.engine.fused`: fewer,
    larger GEMMs with bit-identical outputs)."""

    name = "onednn"

    def install(self, model: torch.nn.Module) -> int:
        for name, layer in model.named_modules():  # check every layer before changing any
            weight = layer.weight if isinstance(layer, torch.nn.Linear) else None
            if weight is not None and (weight.dtype != torch.float32 or not onednn_runs(weight)):
                raise RuntimeError(
                    f"oneDNN linear layers need float32 CPU weights with PyTorch's oneDNN "
                    f"build; {name} has {layer.weight.dtype} on {layer.weight.device} "
                    f"(use --linear-kernel torch)"
                )
        return swap_linears(
            model, family_of(model).siblings, lambda layer, sources: PackedLinear(layer)
        )


def onednn_runs(weight: torch.Tensor) -> bool:
    """True where :class:`PackedLinear` can hold ``weight`` once widened to float32 (a bf16
    or meta weight: :func:`prefixkv.engine.gguf_load.widen`, which the build calls first)."""
    return (
        weight.device.type in ("cpu", "meta")
        and weight.dtype in (torch.float32, torch.bfloat16)
        and bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def linear_kernel(
    name: str,
    model: torch.nn.Module,
    weights: WeightFormat = AS_LOADED,
    activations: Activations = FP32_ACTIVATIONS,
) -> LinearKernel:
    """The kernel called ``name`` (one of :data:`KERNELS`) for ``model``: ``auto`` is native
    where every linear weight is float32 on the CPU and the library builds, else oneDNN where
    it runs, else PyTorch's (logged). ``weights``: how the native kernel packs each weight
    (default: as loaded, fp32); the others run the loaded weights, so ``bf16`` is refused
    for them, as are ``activations`` other than fp32 (:mod:`prefixkv.engine.activations`).
    Raises ValueError for another name or those refusals."""
    if name not in KERNELS:
        raise ValueError(f"unknown linear kernel {name!r}; choose one of {', '.join(KERNELS)}")
    chosen: dict[str, Callable[[], LinearKernel]] = {
        "native": lambda: NativeLinear(weights, activations),
        "onednn": OneDNNLinear,
        "torch": TorchLinear,
    }
    if name != "auto":
        kernel = chosen[name]()
        _check_weights(kernel, weights, activations)
        return kernel
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not layers or refusal(model) is not None:
        return TorchLinear()
    try:
        load()
    except NativeUnavailable as exc:
        runs = all(onednn_runs(m.weight) for m in layers)
        fallback: LinearKernel = OneDNNLinear() if runs else TorchLinear()
        log.warning("linear layers: %s, not native (%s)", fallback.name, exc)
        _check_weights(fallback, weights, activations)
        return fallback
    return NativeLinear(weights, activations)


def _check_weights(kernel: LinearKernel, weights: WeightFormat, activations: Activations) -> None:
    """ValueError for weights or activations only the native kernel runs (``bf16``, ``q8``);
    ``auto`` keeps the loaded weights under any other kernel (logged)."""
    if kernel.name == NativeLinear.name:
        return
    if activations.name != "fp32":
        raise ValueError(f"--activations {activations.name} needs the native linear kernel, "
                         f"not {kernel.name}")  # fmt: skip
    if weights.name == "fp32":
        return
    if weights.name == "bf16":
        raise ValueError(f"--weights bf16 needs the native linear kernel, not {kernel.name}")
    log.info("weights: as loaded (float32) under the %s linear kernel", kernel.name)


class LinearLayer(Protocol):
    """A linear layer, plain or packed."""

    in_features: int
    out_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def linear_layers(model: torch.nn.Module) -> list[LinearLayer]:
    """The model's linear layers, plain or packed, in module order."""
    kinds = torch.nn.Linear | PackedLinear | NativeLinearLayer
    return [cast(LinearLayer, m) for m in model.modules() if isinstance(m, kinds)]


def streamed_bytes(model: torch.nn.Module) -> int:
    """Bytes the model's linear layers read per forward pass: each weight as its kernel holds
    it (a native layer's packed format, else its elements at their size)."""
    total = 0
    for layer in linear_layers(model):
        if isinstance(layer, NativeLinearLayer | torch.nn.Linear):
            total += layer.weight.nbytes
        else:  # oneDNN's opaque float32 layout
            total += layer.in_features * layer.out_features * 4
    return total


def formats_of(model: torch.nn.Module) -> str:
    """The linear layers per weight format, e.g. ``"q4_1 90, q8_0 1"``."""
    plain = f"{kernel_of(model)} float32"
    counts = Counter(
        layer.format if isinstance(layer, NativeLinearLayer) else plain
        for layer in linear_layers(model)
    )
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def padded_rows(rows: int) -> int:
    """The rows :class:`PackedLinear` computes for a call of ``rows`` rows: full pieces of
    MAX_ROWS, then the rest's :func:`row_bucket`."""
    full, rest = divmod(rows, MAX_ROWS)
    return full * MAX_ROWS + (row_bucket(rest) if rest else 0)


def unpadded(rows: int) -> int:
    """The rows PyTorch's own kernel computes for a call of ``rows`` rows: those."""
    return rows


def padding_of(model: torch.nn.Module) -> Callable[[int], int]:
    """The rows ``model``'s linear layers compute for a call of n rows, as a function of n:
    :func:`padded_rows` under oneDNN, :func:`unpadded` under the others."""
    return padded_rows if kernel_of(model) == OneDNNLinear.name else unpadded


def kernel_of(model: torch.nn.Module) -> str:
    """``native`` or ``onednn`` when any of the model's linear layers is that kernel's, else
    ``torch``."""
    for module in model.modules():
        if isinstance(module, NativeLinearLayer):
            return NativeLinear.name
        if isinstance(module, PackedLinear):
            return OneDNNLinear.name
    return TorchLinear.name
