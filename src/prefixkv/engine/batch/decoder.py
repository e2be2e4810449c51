"""The decoder pass: the lean pass's step in one native call for all the decoder layers.

:class:`~.lean.LeanPass` calls the kernels through the door one by one, about eight calls a
layer, each with its checks and new tensors: ~2-3 ms of Python a step for a 30-layer model,
as much as the linear layers' weight stream of a one-sequence decode step. This pass hands
the step's hidden states, its rotary embedding, the pool, the attention plan's work items
and every layer's weights to :meth:`~prefixkv.kernels.ops.Kernels.decoder`, which checks
them all once and runs the same kernels in the same order in C (``csrc/decoder.c``): its
logits and the KV it writes are bit-identical to the lean pass's, hence to transformers'
modules' (tests/engine/batch/test_decoder.py). The embedding, the rotary embedding's
cos/sin (the model's own ``rotary_emb``), the final norm and the head stay as the lean pass
runs them.

Covered (:meth:`DecoderPass.of`): what the lean pass covers, where every layer's four
projections are single :class:`~prefixkv.engine.native_linear.NativeLinearLayer`s (a joined
projection split by format, as in some K-quant files, keeps the lean pass). The lean pass
stays the per-kernel reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from prefixkv.engine.batch.lean import LeanLayer, LeanPass, NotCovered
from prefixkv.engine.batch.native import NativePlan
from prefixkv.engine.native_layers import NativeRMSNorm
from prefixkv.engine.native_linear import NativeLinearLayer
from prefixkv.kernels.decoder import DecoderLayer, DecoderShape, StepTensors

if TYPE_CHECKING:
    from prefixkv.engine.batch.attention import StepLayout


@dataclass(frozen=True)
class LayerModules:
    """One decoder layer's native modules, read at each step (a replaced buffer is seen)."""

    attn_norm: NativeRMSNorm
    qkv: NativeLinearLayer
    o_proj: NativeLinearLayer
    mlp_norm: NativeRMSNorm
    gate_up: NativeLinearLayer
    down: NativeLinearLayer
    scale: float

    def weights(self) -> DecoderLayer:
        """The layer's weights as they stand."""
        qkv, o_proj, gate_up, down = self.qkv, self.o_proj, self.gate_up, self.down
        return DecoderLayer(
            _read(self.attn_norm, "weight"), self.attn_norm.eps, qkv.weight, _read(qkv, "bias"),
            o_proj.weight, _read(o_proj, "bias"), _read(self.mlp_norm, "weight"),
            self.mlp_norm.eps, gate_up.weight, _read(gate_up, "bias"), down.weight,
            _read(down, "bias"), self.scale,
        )  # fmt: skip


def _read(module: torch.nn.Module, name: str) -> Any:
    """``module.name``, looked up where Module keeps parameters first: its ``__getattr__``
    costs ~0.3 us a read, at 12 reads a layer and step."""
    found = module._parameters.get(name)
    return found if found is not None else getattr(module, name)


@dataclass(frozen=True)
class DecoderPass:
    """The decoder :class:`~.passes.ModelPass` (see the module docstring)."""

    lean: LeanPass
    layers: tuple[LayerModules, ...]
    shape: DecoderShape
    name = "decoder"

    @staticmethod
    def of(lean: LeanPass) -> DecoderPass:
        """The decoder pass over ``lean``'s modules; NotCovered saying why where a layer's
        projection is not one native linear layer."""
        width = lean.layers[0].width
        if any(layer.width != width for layer in lean.layers):
            raise NotCovered("the layers' MLPs differ in width")
        layers = tuple(_modules(layer) for layer in lean.layers)
        return DecoderPass(lean, layers, DecoderShape(lean.heads, lean.kv_heads, lean.dim, width))

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, pool: torch.Tensor,
        step: StepLayout, keep: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        plan = step.attention
        if step.spans or not isinstance(plan, NativePlan):
            raise RuntimeError("the decoder pass attends through the native plan only")
        lean = self.lean
        with lean.lock, torch.inference_mode():
            h, (cos, sin) = lean.inputs(input_ids, positions)
            weights = [layer.weights() for layer in self.layers]
            tensors = StepTensors(h, cos, sin, pool, step.slots)
            lean.kernels.decoder(tensors, plan.items, weights, self.shape, plan.softcap)
            return lean.logits(h, keep)


def _modules(layer: LeanLayer) -> LayerModules:
    qkv, o_proj, gate_up, down = layer.modules
    return LayerModules(layer.attn_norm, _native(qkv, "q/k/v"), _native(o_proj, "o_proj"),
                        layer.mlp_norm, _native(gate_up, "gate/up"), _native(down, "down"),
                        layer.scale)  # fmt: skip


def _native(module: torch.nn.Module, name: str) -> NativeLinearLayer:
    if not isinstance(module, NativeLinearLayer):
        raise NotCovered(f"a layer's {name} is {type(module).__name__}, not one native linear "
                         "layer")  # fmt: skip
    return module
