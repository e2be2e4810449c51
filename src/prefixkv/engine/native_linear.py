"""The ``native`` linear kernel: prefixkv's own GEMM (``prefixkv/kernels/csrc/linear.c``) on
weights packed once.

Why not oneDNN: on few rows oneDNN streams the weights well below the machine's memory
bandwidth; this kernel streams them faster and matches it at 512 rows (measured in
``docs/decisions.md``, "Linear layers").

Why it is exact: every output is one multiply-add chain over the input features in order,
whatever the call's rows, so a token's activations are the same prefilled in a 512-token
chunk, decoded alone, or batched with 15 others: cached and uncached prompts, the serial
engine and the batch runner all agree bit for bit (oneDNN's one-row calls of 1536-wide
inputs rounded differently from its larger ones). No row padding is needed (oneDNN keeps
state per row count; this kernel keeps none).

Inputs other than float32 on the CPU are refused with the way out
(:func:`prefixkv.engine.native_layers.refuse_input`), never converted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import cast

import torch

from prefixkv.engine.activations import FP32_ACTIVATIONS, Activations
from prefixkv.engine.fused import swap_linears
from prefixkv.engine.native_layers import refuse_input, swap_native_layers
from prefixkv.engine.weights import AS_LOADED, WeightFormat
from prefixkv.kernels.formats import PackedWeight, pack_f32
from prefixkv.kernels.int_layout import BASE, restore
from prefixkv.kernels.ops import Kernels, load
from prefixkv.models import family_of

_F32 = torch.float32


class NativeLinearLayer(torch.nn.Module):
    """``y = x W^T + b`` through the native ``linear`` on ``weight``, a
    :class:`~prefixkv.kernels.formats.PackedWeight` (the plain weight is not kept). Built
    from an ``nn.Linear`` (float32 CPU: TypeError otherwise), its weight packed as ``f32``;
    or :meth:`from_packed`, from a weight packed in any format."""

    packed: torch.Tensor  # weight.data, a buffer: what the model fingerprint hashes

    def __init__(self, linear: torch.nn.Linear, kernels: Kernels) -> None:
        if linear.weight.dtype != _F32 or not linear.weight.is_cpu:
            refuse_input(type(self).__name__, linear.weight)
        bias = None if linear.bias is None else linear.bias.detach()
        self._setup(pack_f32(linear.weight.detach()), bias, kernels)

    @classmethod
    def from_packed(cls, weight: PackedWeight, bias: torch.Tensor | None,
                    kernels: Kernels) -> NativeLinearLayer:  # fmt: skip
        """A layer on ``weight`` as packed (not copied); ``bias``: ``[out_features]`` float32
        or None. The door checks both on each call."""
        layer = cls.__new__(cls)
        layer._setup(weight, bias, kernels)
        return layer

    def _setup(self, weight: PackedWeight, bias: torch.Tensor | None, kernels: Kernels) -> None:
        """Module state: mutates self only."""
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.format = weight.format
        self.register_buffer("packed", weight.data)
        self._weight = weight
        self.bias = None if bias is None else torch.nn.Parameter(bias)
        self._kernels = kernels

    @property
    def weight(self) -> PackedWeight:
        """The packed weight, over the ``packed`` buffer as it stands (``.to()`` or
        ``mapped`` may replace it). Mutates the cached record only when the buffer changed
        (a record costs ~0.5 us to build, at 121 calls a decode step)."""
        # not self.packed: Module.__getattr__ costs ~0.3 us, at 120 reads a decode step
        packed = cast(torch.Tensor, self._buffers["packed"])
        if self._weight.data is not packed:
            self._weight = PackedWeight(self.format, self.in_features, self.out_features,
                                        packed)  # fmt: skip
        return self._weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., in_features]`` float32 CPU, any strides -> ``[..., out_features]``.
        TypeError for another dtype or device, ValueError for another last dimension."""
        if x.dtype is not _F32 or not x.is_cpu:
            refuse_input(type(self).__name__, x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: input of shape {tuple(x.shape)}, the layer takes "
                f"{self.in_features} features"
            )
        return self._run(x, self.weight)

    def _run(self, x: torch.Tensor, weight: PackedWeight) -> torch.Tensor:
        """``x`` (checked by :meth:`forward`) through the kernel on ``weight``."""
        rows = x.reshape(-1, self.in_features)
        if not rows.is_contiguous():
            rows = rows.contiguous()
        out = self._kernels.linear(rows, weight, self.bias)
        return out.view(*x.shape[:-1], self.out_features)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with float32 activations: an integer-dot weight restored to its
        base format for this call (a copy of the layer's weight, freed after it)."""
        weight = self.weight
        base = BASE.get(weight.format)
        if base is not None:
            weight = PackedWeight(base, weight.in_features, weight.out_features,
                                  restore(base, weight.data))  # fmt: skip
        return self._run(x, weight)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, native "
            f"{self.format}"
        )


def native_runs(weight: torch.Tensor) -> bool:
    """True where :class:`NativeLinear` can pack ``weight`` (the library aside): float32 or
    bf16 on the CPU, or on the meta device (its values are a file's rows, which the weight
    format packs: :mod:`prefixkv.engine.gguf_load`)."""
    return weight.device.type in ("cpu", "meta") and weight.dtype in (_F32, torch.bfloat16)


def refusal(model: torch.nn.Module) -> str | None:
    """Why :class:`NativeLinear` cannot take ``model``'s linear layers, or None: each weight
    must be one :func:`native_runs` takes, and the activations float32 (every other
    parameter float32: a model cast whole to bf16 computes in bf16)."""
    try:
        embedding = model.get_input_embeddings()  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        embedding = None
    packed: set[int] = set()
    for name, layer in model.named_modules():
        if isinstance(layer, torch.nn.Linear) or layer is embedding:
            if isinstance(layer, torch.nn.Linear) and not native_runs(layer.weight):
                return f"{name} has {layer.weight.dtype} on {layer.weight.device}"
            packed.add(id(layer.weight))
    for name, param in model.named_parameters():
        if id(param) not in packed and param.dtype != _F32:
            return f"{name} is {param.dtype}: the model does not compute in float32"
    return None


class NativeLinear:
    """:class:`NativeLinearLayer` for every ``nn.Linear`` of a CPU model (see
    :func:`native_runs`), sibling
    projections of one input first joined into one (:mod:`prefixkv.engine.fused`); then,
    where the model's family computes them as the native kernels do, the RMS norms and the
    gated MLP's activation in C too (:mod:`prefixkv.engine.native_layers`)."""

    name = "native"

    def __init__(
        self, weights: WeightFormat = AS_LOADED, activations: Activations = FP32_ACTIVATIONS
    ) -> None:
        """``weights``: how each layer's weight is packed (``--weights``; default as
        loaded); ``activations``: what it is multiplied with (``--activations``; default
        float32, exact)."""
        self.weights = weights
        self.activations = activations

    def install(self, model: torch.nn.Module) -> int:
        """Raises RuntimeError (NativeUnavailable where the library does not build) before
        changing anything when a layer is not float32 on the CPU."""
        why = refusal(model)
        if why is not None:
            raise RuntimeError(f"native linear layers need float32 CPU weights (bf16 linear "
                               f"weights in a float32 model too); {why} (use --linear-kernel "
                               "torch)")  # fmt: skip
        family = family_of(model)
        kernels = load()

        def make(linear: torch.nn.Linear, sources: Sequence[torch.nn.Linear]) -> torch.nn.Module:
            runs = self.weights.runs(sources)
            if len(runs) == 1:
                return self._layer(linear, sources, kernels)
            parts, start = [], 0
            for count in runs:  # each run's rows of the joined weight, packed on their own
                rows = sum(source.out_features for source in sources[start : start + count])
                part = _rows(linear, sum(s.out_features for s in sources[:start]), rows)
                parts.append(self._layer(part, sources[start : start + count], kernels))
                start += count
            return SplitLinearLayer(parts)

        swapped = swap_linears(model, family.siblings, make)
        swap_native_layers(model, family, kernels)
        return swapped

    def _layer(self, linear: torch.nn.Linear, sources: Sequence[torch.nn.Linear],
               kernels: Kernels) -> NativeLinearLayer:  # fmt: skip
        """``linear`` (whose rows are ``sources``') as one packed layer."""
        bias = None if linear.bias is None else linear.bias.detach()
        packed = self.activations.adapt(self.weights.pack(linear, sources))
        return NativeLinearLayer.from_packed(packed, bias, kernels)


@contextlib.contextmanager
def float_activations(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s layers on integer-dot formats compute with float32
    activations on the same weights (:meth:`NativeLinearLayer.float_forward`, one layer's
    copy at a time): for a check that compares two attention implementations within a
    float32 tolerance, which 8-bit activations would not keep (their last-bit differences
    flip roundings, amplified layer after layer). Mutates the layers' ``forward`` for the
    block only."""
    layers = [m for m in model.modules()
              if isinstance(m, NativeLinearLayer) and m.format in BASE]  # fmt: skip
    for layer in layers:
        layer.forward = layer.float_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


class SplitLinearLayer(torch.nn.Module):
    """A joined projection whose siblings keep weights of different formats (llama.cpp's
    K mixes store some layers' attn_v in Q6_K beside Q4_K q and k): one
    :class:`NativeLinearLayer` a run of siblings in one format, their outputs side by side.
    Every output column is the same multiply-add chain as in one joined layer."""

    def __init__(self, parts: Sequence[NativeLinearLayer]) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleList(parts)
        self.in_features = parts[0].in_features
        self.out_features = sum(part.out_features for part in parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., in_features]`` -> a new ``[..., out_features]`` (as each part)."""
        return torch.cat([part(x) for part in self.parts], dim=-1)


def _rows(linear: torch.nn.Linear, start: int, count: int) -> torch.nn.Linear:
    """A new ``nn.Linear`` over rows ``[start, start + count)`` of ``linear`` (views of its
    weight and bias)."""
    part = torch.nn.Linear(linear.in_features, count, bias=linear.bias is not None,
                           device="meta")  # fmt: skip
    part.weight = torch.nn.Parameter(linear.weight.detach()[start : start + count], False)
    if linear.bias is not None:
        part.bias = torch.nn.Parameter(linear.bias.detach()[start : start + count], False)
    return part
