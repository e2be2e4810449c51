"""The native kernel's vector work in Llama layers (``native_layers.c``): the RMS norms, and
the MLP's ``SiLU(gate) * up`` on the joined gate/up projection.

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
"""

from __future__ import annotations

import ctypes
import logging

import torch
from transformers.activations import SiLUActivation
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from prefixkv.engine.fused import SIBLINGS, joined_projection

log = logging.getLogger(__name__)

GATE_UP = SIBLINGS[1]  # ("gate_proj", "up_proj"): the MLP's sibling projections, gate first


class NativeRMSNorm(torch.nn.Module):
    """A Llama RMS norm, ``weight * x / sqrt(mean(x^2) + eps)`` over the last dimension,
    through ``prefixkv_rms_norm``. float32 only (the native kernel's dtype)."""

    def __init__(self, norm: LlamaRMSNorm, library: ctypes.CDLL) -> None:
        super().__init__()
        self.weight = norm.weight  # [hidden]
        self._dim = norm.weight.shape[0]
        self.eps = float(norm.variance_epsilon)
        self._library = library

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., hidden]`` float32 -> a new tensor of the same shape."""
        # As few tensor calls as possible: each costs ~1-3 us, the C call ~1 us a row.
        if not x.is_contiguous():
            x = x.contiguous()
        out = torch.empty_like(x)
        dim = self._dim
        self._library.prefixkv_rms_norm(
            x.data_ptr(), x.numel() // dim, dim, dim, self.weight.data_ptr(), self.eps,
            out.data_ptr(),
        )  # fmt: skip
        return out

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, native"


class NativeGatedMLP(torch.nn.Module):
    """A Llama MLP, ``down(SiLU(gate(x)) * up(x))``, on its joined gate/up projection
    (``gate_up``, whose output is ``[..., gate columns | up columns]``), with the activation
    and product in one ``prefixkv_silu_mul`` pass."""

    def __init__(
        self, gate_up: torch.nn.Module, down: torch.nn.Module, width: int, library: ctypes.CDLL
    ) -> None:
        super().__init__()
        self.gate_up = gate_up
        self.down_proj = down
        self.width = width  # intermediate size: columns of gate and of up
        self._library = library

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = self.gate_up(x)  # [..., 2 * width]
        if not joined.is_contiguous():
            joined = joined.contiguous()
        width = self.width
        product = joined.new_empty((*joined.shape[:-1], width))
        self._library.prefixkv_silu_mul(
            joined.data_ptr(), joined.numel() // (2 * width), width, 2 * width,
            product.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        down: torch.Tensor = self.down_proj(product)
        return down


def swap_llama_layers(model: torch.nn.Module, library: ctypes.CDLL) -> int:
    """Put :class:`NativeRMSNorm` in the place of every float32 ``LlamaRMSNorm`` of ``model``,
    and :class:`NativeGatedMLP` in that of every ``LlamaMLP`` with a SiLU activation whose
    gate and up projections were joined (:func:`prefixkv.engine.fused.join_siblings`).
    Returns how many modules were replaced; leaves any other module as it is (other model
    families keep their own). Mutates ``model``."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = _native_of(child, library)
            if replacement is not None:
                setattr(parent, name, replacement)
                swapped += 1
    log.info("native norms and MLP activations: %d modules swapped", swapped)
    return swapped


def _native_of(module: torch.nn.Module, library: ctypes.CDLL) -> torch.nn.Module | None:
    """The native replacement of ``module``, or None where it has none."""
    if isinstance(module, LlamaRMSNorm):
        weight = module.weight
        cpu_float = weight.dtype == torch.float32 and weight.device.type == "cpu"
        return NativeRMSNorm(module, library) if cpu_float else None
    if not isinstance(module, LlamaMLP) or not isinstance(module.act_fn, SiLUActivation):
        return None
    joined = joined_projection(module, GATE_UP)  # its output: [gate columns | up columns]
    if joined is None:
        return None
    gate, up = joined.widths
    return NativeGatedMLP(joined.joined, module.down_proj, gate, library) if gate == up else None
