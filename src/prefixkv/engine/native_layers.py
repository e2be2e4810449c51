"""The native kernel's vector work in Llama-style layers (``prefixkv/kernels/csrc/layers.c``):
the RMS norms, and the MLP's ``SiLU(gate) * up`` on the joined gate/up projection.

Installed with the native linear kernel (:class:`prefixkv.engine.native_linear.NativeLinear`),
after its linear layers, on the modules the model's family names
(:attr:`prefixkv.models.Family.norms` and :attr:`~prefixkv.models.Family.mlps`): those whose
math is exactly Llama's; and Gemma's norms, which are Llama's with the weight ``1 + weight``
(:attr:`~prefixkv.models.Family.offset_norms`). transformers computes a Llama RMS norm in
six tensor operations and the MLP's activation in two, each writing a new tensor and paying
its dispatch; here each is one C pass over the rows (the measurements: ``docs/decisions.md``,
"Linear layers").

Like the linear kernel, each row is computed on its own in a fixed order, so a token's result
does not depend on its batch. It is not bit-identical to transformers' own operations (a
different summation order and exponential: SmolLM2's logits over a 300-token prompt moved by
at most 1e-4, at magnitudes up to 35, with the same argmax everywhere): a model's KV is
computed with one or the other throughout, and the model fingerprint tells them apart (the
native MLP's joined projection is named ``gate_up``).

Inputs that are not float32 on the CPU are refused (:func:`refuse_input`), not converted: a
module computing in another dtype, or with another kernel, would store KV under a fingerprint
that names this one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn

import torch
from transformers.activations import SiLUActivation

from prefixkv.engine.fused import joined_projection
from prefixkv.kernels.ops import Kernels
from prefixkv.models import Family, GatedMLP
from prefixkv.models.family import text_config

log = logging.getLogger(__name__)

_F32 = torch.float32
_SILU = (SiLUActivation, torch.nn.SiLU)  # transformers' "silu" and "swish": x * sigmoid(x)


def refuse_input(module: str, x: torch.Tensor) -> NoReturn:
    """TypeError for ``module``'s input ``x`` that is not float32 on the CPU (the native
    kernels' only dtype and device): names ``x``'s dtype and device, autocast when it is on
    (the likely cause: it makes the layers around these ones compute in another dtype), and
    the way out."""
    why = ""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        why = f"; torch.autocast to {dtype} is on, and they do not follow it"
    raise TypeError(
        f"{module}: prefixkv's native kernels run float32 CPU tensors, not {x.dtype} on "
        f"{x.device}{why}. To run another dtype or device, load the model with "
        f"--linear-kernel torch (Engine.from_pretrained(..., linear_kernel='torch'))"
    )


class NativeRMSNorm(torch.nn.Module):
    """An RMS norm, ``weight * x / sqrt(mean(x^2) + eps)`` over the last dimension, through
    the native ``rms_norm``; built from a Llama norm (:meth:`llama`) or a Gemma one
    (:meth:`gemma`). float32 CPU only (the native kernel's dtype): TypeError for another
    weight at construction, for another input at call time."""

    def __init__(self, weight: torch.nn.Parameter, eps: float, kernels: Kernels) -> None:
        super().__init__()
        if weight.dtype is not _F32 or not weight.is_cpu:
            refuse_input(type(self).__name__, weight)
        self.weight = weight  # [hidden], registered: the model fingerprint hashes it
        self.eps = eps
        self._kernels = kernels

    @classmethod
    def llama(cls, norm: torch.nn.Module, kernels: Kernels) -> NativeRMSNorm:
        """In the place of ``norm``, a module of Llama's math with ``weight`` and
        ``variance_epsilon`` (a family's :attr:`~prefixkv.models.Family.norms`): its own
        weight."""
        eps = float(getattr(norm, "variance_epsilon"))  # noqa: B009 (typed by nn.Module)
        return cls(_parameter(_weight(norm)), eps, kernels)

    @classmethod
    def gemma(cls, norm: torch.nn.Module, kernels: Kernels) -> NativeRMSNorm:
        """In the place of ``norm``, a module of Gemma's math, ``(1 + weight) * x /
        sqrt(mean(x^2) + eps)`` in float32, with ``weight`` and ``eps`` (a family's
        :attr:`~prefixkv.models.Family.offset_norms`): the weight ``1 + weight``, as
        Gemma computes it on each call (a new parameter, the same float32 sum)."""
        weight = _weight(norm)
        if weight.dtype is not _F32 or not weight.is_cpu:
            refuse_input(cls.__name__, weight)
        eps = float(getattr(norm, "eps"))  # noqa: B009 (typed by nn.Module)
        return cls(_parameter(1.0 + weight.detach()), eps, kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., hidden]`` float32 CPU, any strides -> a new tensor of its shape.
        TypeError for another dtype or device, ValueError for another last dimension."""
        # As few tensor calls as possible: each costs ~1-3 us, the C call ~1 us a row.
        if x.dtype is not _F32 or not x.is_cpu:
            refuse_input(type(self).__name__, x)
        if not x.is_contiguous():
            x = x.contiguous()
        return self._kernels.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, native"


class NativeGatedMLP(torch.nn.Module):
    """A Llama MLP, ``down(SiLU(gate(x)) * up(x))``, on its joined gate/up projection
    (``gate_up``, whose output is ``[..., gate columns | up columns]``), with the activation
    and product in one native ``silu_mul`` pass."""

    def __init__(
        self, gate_up: torch.nn.Module, down: torch.nn.Module, width: int, kernels: Kernels
    ) -> None:
        super().__init__()
        self.gate_up = gate_up
        self.down_proj = down
        self.width = width  # intermediate size: columns of gate and of up
        self._kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """TypeError when the joined projection's output is not float32 on the CPU,
        ValueError when it is not ``2 * width`` wide."""
        joined = self.gate_up(x)  # [..., 2 * width]
        if joined.dtype is not _F32 or not joined.is_cpu:
            refuse_input(type(self).__name__, joined)
        if not joined.is_contiguous():
            joined = joined.contiguous()
        down: torch.Tensor = self.down_proj(self._kernels.silu_mul(joined, self.width))
        return down


@dataclass(frozen=True)
class NativeSwaps:
    """How many modules :func:`swap_native_layers` replaced, by kind."""

    norms: int
    mlps: int

    @property
    def total(self) -> int:
        return self.norms + self.mlps


def swap_native_layers(model: torch.nn.Module, family: Family, kernels: Kernels) -> NativeSwaps:
    """Put :class:`NativeRMSNorm` in the place of every float32 CPU module of ``model`` whose
    class is one of ``family.norms`` or ``family.offset_norms``, and :class:`NativeGatedMLP` in that of every MLP of
    ``family.mlps`` whose activation is SiLU and whose gate/up product is one projection
    (joined by :func:`prefixkv.engine.fused.join_siblings`, or by the checkpoint) of equal
    halves. Returns the counts by kind (logged in one line, saying so where there are none);
    leaves any other module as it is. Mutates ``model``."""
    norms = mlps = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, family.norms) and _native_dtype(_weight(child)):
                setattr(parent, name, NativeRMSNorm.llama(child, kernels))
                norms += 1
                continue
            if isinstance(child, family.offset_norms) and _native_dtype(_weight(child)):
                setattr(parent, name, NativeRMSNorm.gemma(child, kernels))
                norms += 1
                continue
            replacement = _native_mlp(child, family.mlps, kernels)
            if replacement is not None:
                setattr(parent, name, replacement)
                mlps += 1
    swaps = NativeSwaps(norms, mlps)
    _log_swaps(model, family, swaps)
    return swaps


def _log_swaps(model: torch.nn.Module, family: Family, swaps: NativeSwaps) -> None:
    """One line: the counts by kind, with why the MLPs keep transformers' own where the
    family has gated MLPs but none was swapped, or what the family keeps where none was."""
    if not swaps.total:
        log.info("native layers (%s): none swapped; %s", family.name, family.keeps)
        return
    why = ""
    if family.mlps and not swaps.mlps:
        act = getattr(text_config(model.config), "hidden_act", "unknown")
        why = f" (hidden_act {act!r}: the native MLP is SiLU-gated only)"
    log.info(
        "native layers (%s): %d norms, %d MLPs swapped%s", family.name, swaps.norms, swaps.mlps, why
    )


def _weight(norm: torch.nn.Module) -> torch.Tensor:
    """``norm.weight``; TypeError where it is not a tensor."""
    weight = norm.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(norm).__name__}.weight is not a tensor")
    return weight


def _parameter(weight: torch.Tensor) -> torch.nn.Parameter:
    """``weight`` as a parameter (itself where it is one)."""
    if isinstance(weight, torch.nn.Parameter):
        return weight
    return torch.nn.Parameter(weight, requires_grad=False)


def _native_dtype(weight: torch.Tensor) -> bool:
    return weight.dtype == torch.float32 and weight.device.type == "cpu"


def _native_mlp(
    module: torch.nn.Module, mlps: tuple[GatedMLP, ...], kernels: Kernels
) -> NativeGatedMLP | None:
    """The native replacement of ``module`` when it is one of ``mlps``'s classes with a SiLU
    activation and an equal-halved gate/up projection, else None."""
    for mlp in mlps:
        if not isinstance(module, mlp.classes):
            continue
        if not isinstance(getattr(module, mlp.activation, None), _SILU):
            return None
        found = _gate_up(module, mlp.gate_up)
        if found is None:
            return None
        projection, width = found
        return NativeGatedMLP(projection, getattr(module, mlp.down), width, kernels)
    return None


def _gate_up(module: torch.nn.Module, names: tuple[str, ...]) -> tuple[torch.nn.Module, int] | None:
    """``module``'s projection whose output is ``[gate | up]``, and the width of each half;
    None where there is none or the halves differ."""
    if len(names) == 1:  # joined in the checkpoint
        projection = getattr(module, names[0], None)
        out = getattr(projection, "out_features", None)
        if projection is None or not isinstance(out, int) or out % 2:
            return None
        return projection, out // 2
    joined = joined_projection(module, names)
    if joined is None:
        return None
    gate, up = joined.widths
    return (joined.joined, gate) if gate == up else None
