"""The native kernel's vector work in Llama layers (``prefixkv/kernels/csrc/layers.c``): the
RMS norms, and the MLP's ``SiLU(gate) * up`` on the joined gate/up projection.

Installed with the native linear kernel (:class:`prefixkv.engine.native_linear.NativeLinear`),
after its linear layers. transformers computes a Llama RMS norm in six tensor operations and
the MLP's activation in two, each writing a new tensor and paying its dispatch. One C pass
each, SmolLM2's shapes: a norm of 16 rows 8.6 against 32.5 us, of 512 rows 59 against
143 us; SiLU * up of 512 rows 231 against 359 us (16 rows: 26 us either way). Replayed in
lockstep (``docs/design.md``), 16-sequence decode steps took 4-6 ms less (p50 62-79 against
67-86 ms) and the 16-client ``bench serve`` workload 4.6-5.1% less time; the 1-client one
7-9% less.

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
from typing import NoReturn

import torch
from transformers.activations import SiLUActivation
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from prefixkv.engine.fused import SIBLINGS, joined_projection
from prefixkv.kernels.ops import Kernels

log = logging.getLogger(__name__)

GATE_UP = SIBLINGS[1]  # ("gate_proj", "up_proj"): the MLP's sibling projections, gate first
_F32 = torch.float32


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
    """A Llama RMS norm, ``weight * x / sqrt(mean(x^2) + eps)`` over the last dimension,
    through the native ``rms_norm``. float32 CPU only (the native kernel's dtype): TypeError
    for another norm at construction, for another input at call time."""

    def __init__(self, norm: LlamaRMSNorm, kernels: Kernels) -> None:
        super().__init__()
        if norm.weight.dtype is not _F32 or not norm.weight.is_cpu:
            refuse_input(type(self).__name__, norm.weight)
        self.weight = norm.weight  # [hidden]
        self.eps = float(norm.variance_epsilon)
        self._kernels = kernels

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


def swap_llama_layers(model: torch.nn.Module, kernels: Kernels) -> int:
    """Put :class:`NativeRMSNorm` in the place of every float32 ``LlamaRMSNorm`` of ``model``,
    and :class:`NativeGatedMLP` in that of every ``LlamaMLP`` with a SiLU activation whose
    gate and up projections were joined (:func:`prefixkv.engine.fused.join_siblings`).
    Returns how many modules were replaced; leaves any other module as it is (other model
    families keep their own). Mutates ``model``."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = _native_of(child, kernels)
            if replacement is not None:
                setattr(parent, name, replacement)
                swapped += 1
    log.info("native norms and MLP activations: %d modules swapped", swapped)
    return swapped


def _native_of(module: torch.nn.Module, kernels: Kernels) -> torch.nn.Module | None:
    """The native replacement of ``module``, or None where it has none."""
    if isinstance(module, LlamaRMSNorm):
        weight = module.weight
        cpu_float = weight.dtype == torch.float32 and weight.device.type == "cpu"
        return NativeRMSNorm(module, kernels) if cpu_float else None
    if not isinstance(module, LlamaMLP) or not isinstance(module.act_fn, SiLUActivation):
        return None
    joined = joined_projection(module, GATE_UP)  # its output: [gate columns | up columns]
    if joined is None:
        return None
    gate, up = joined.widths
    return NativeGatedMLP(joined.joined, module.down_proj, gate, kernels) if gate == up else None
