"""The lean model pass: a Llama-style decoder's step as a loop over the native kernels.

Per layer: RMS norm, the joined q/k/v projection, rotary embedding of q and k in place
(``Kernels.rotary``), K/V stored into the pool, attention (one C call for the step), o_proj
and the residual, RMS norm, the joined gate/up projection, SiLU * up, down and the residual;
then the final norm and the head, for the kept rows only. cos/sin come from the model's own
``rotary_emb`` once a step (so every rope-scaling variant stays transformers' own), shared
by every layer.

It runs the very kernels transformers' modules run once the native swaps are in
(:mod:`prefixkv.engine.native_linear`, :mod:`prefixkv.engine.native_layers`,
:mod:`.native`), on the same values: the rotation is transformers' float32 arithmetic
(three roundings, no fused multiply-add), each residual the same float add, and every
kernel computes a row the same whatever the call's other rows (so norming and projecting
only the kept rows at the end changes nothing). Its logits are bit-identical to
:class:`~.passes.TransformersPass`'s (tests/engine/batch/test_lean.py); what it drops is
the glue: module calls, views, the rotation's ~20 small ops a layer, the Cache object.

Covered (:meth:`LeanPass.of`): Llama, Mistral and Qwen2 models whose every layer attends in
full (no window, no logit cap) with the native attention kernel, and whose norms, joined
projections and gated MLPs are the native swaps. Anything else keeps
:class:`~.passes.TransformersPass`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from prefixkv.engine.fingerprint import attention_reach
from prefixkv.engine.fused import JoinedProjection, ProjectionPart
from prefixkv.engine.native_layers import NativeGatedMLP, NativeRMSNorm
from prefixkv.engine.native_linear import NativeLinearLayer
from prefixkv.kernels.ops import Kernels

if TYPE_CHECKING:
    from prefixkv.engine.batch.attention import StepLayout
    from prefixkv.engine.batch.kernels import AttentionKernel

Linear = Callable[[torch.Tensor], torch.Tensor]
"""``[rows, in] -> [rows, out]``, a new contiguous tensor."""


class NotCovered(Exception):
    """The lean pass does not cover this model; the message says what it lacks."""


@dataclass(frozen=True)
class LeanLayer:
    """One decoder layer's pieces, as the swaps left them."""

    attn_norm: NativeRMSNorm  # read at each call: a weight replaced later (.to()) is seen
    qkv: Linear  # [rows, (heads + 2 kv heads) * dim]: q, then k, then v columns
    o_proj: Linear
    mlp_norm: NativeRMSNorm
    gate_up: Linear  # [rows, 2 * width]: gate, then up columns
    width: int
    down: Linear
    scale: float  # the attention's score scaling
    modules: tuple[torch.nn.Module, ...]  # q/k/v, o_proj, gate/up, down (the decoder pass's)


@dataclass(frozen=True)
class LeanPass:
    """The lean :class:`~.passes.ModelPass` (see the module docstring)."""

    kernels: Kernels
    lock: threading.Lock
    embed: torch.nn.Module
    rotary: torch.nn.Module
    layers: tuple[LeanLayer, ...]
    norm: NativeRMSNorm
    head: torch.nn.Module
    heads: int
    kv_heads: int
    dim: int
    name = "lean"

    @staticmethod
    def of(model: Any, kernel: AttentionKernel, lock: threading.Lock) -> LeanPass:
        """The lean pass over ``model``'s modules (shared, not copied) with ``kernel``;
        NotCovered saying why where it does not cover them."""
        from prefixkv.engine.batch.native import NativeKernel

        if not isinstance(kernel, NativeKernel):
            raise NotCovered(f"the attention kernel is {kernel.name!r}, not 'native'")
        decoder = _decoder(model)
        if attention_reach(model.config):
            raise NotCovered("a layer attends through a window or caps its logits")
        first = decoder.layers[0].self_attn
        heads, kv_heads = int(model.config.num_attention_heads), _kv_heads(model.config)
        dim = int(first.head_dim)
        layers = tuple(
            _layer(layer, kernel.kernels, (heads, kv_heads, dim))
            for layer in decoder.layers[: model.config.num_hidden_layers]
        )
        head = model.get_output_embeddings()
        if not isinstance(head, torch.nn.Module):
            raise NotCovered("the model has no output head module")
        return LeanPass(kernel.kernels, lock, decoder.embed_tokens, decoder.rotary_emb, layers,
                        _norm(decoder.norm, "the final norm"), head, heads, kv_heads, dim)  # fmt: skip

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, pool: torch.Tensor,
        step: StepLayout, keep: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        if step.spans:  # the native kernel plans every sequence; a contract break otherwise
            raise RuntimeError("the lean pass attends through the native plan only")
        layers_, _, kv_heads, blocks, size, dim = pool.shape
        flat = pool.view(layers_, 2, kv_heads, blocks * size, dim)  # as PagedKV reads it
        with self.lock, torch.inference_mode():
            h, rope = self.inputs(input_ids, positions)
            for index, layer in enumerate(self.layers):
                h = self._layer(layer, h, rope, flat[index], step)
            return self.logits(h, keep)

    def inputs(self, input_ids: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
        """The step's embeddings ``[T, hidden]`` (a new contiguous tensor) and its rotary
        ``(cos, sin)``, each ``[T, dim]`` contiguous. In inference mode."""
        hidden = self.embed(input_ids)  # [1, T, hidden], a new tensor
        cos, sin = self.rotary(hidden, position_ids=positions)  # [1, T, dim]
        return hidden[0], (cos[0].contiguous(), sin[0].contiguous())

    def logits(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """float32 logits of rows ``keep`` of the last layer's ``h``. In inference mode."""
        kept = h.index_select(0, keep)
        normed = self.kernels.rms_norm(kept, self.norm.weight, self.norm.eps)
        logits: torch.Tensor = self.head(normed).float()
        return logits

    def _layer(self, layer: LeanLayer, h: torch.Tensor,
               rope: tuple[torch.Tensor, torch.Tensor], pool: torch.Tensor,
               step: StepLayout) -> torch.Tensor:  # fmt: skip
        """``h`` ``[T, hidden]`` through one decoder layer, its K/V written into ``pool``
        (``[2, kv_heads, slots, dim]``); a new tensor."""
        kernels, heads, kv_heads, dim = self.kernels, self.heads, self.kv_heads, self.dim
        rows = h.shape[0]
        qkv = layer.qkv(kernels.rms_norm(h, layer.attn_norm.weight, layer.attn_norm.eps))
        kernels.rotary(qkv, rope[0], rope[1], heads + kv_heads)  # q and k heads, in place
        split = qkv.view(rows, heads + 2 * kv_heads, dim).transpose(0, 1)  # [heads', T, dim]
        keys, values = pool[0], pool[1]
        plan = step.attention
        plan.store(keys, values, split[heads : heads + kv_heads], split[heads + kv_heads :],
                   step.slots)  # fmt: skip
        attended = h.new_empty(rows, heads, dim)
        plan.attend(split[:heads], keys, values, attended, layer.scale)
        h = h + layer.o_proj(attended.view(rows, heads * dim))
        normed = kernels.rms_norm(h, layer.mlp_norm.weight, layer.mlp_norm.eps)
        return h + layer.down(kernels.silu_mul(layer.gate_up(normed), layer.width))


_DECODERS = {
    "LlamaForCausalLM": ("LlamaModel", "LlamaDecoderLayer", "LlamaAttention"),
    "MistralForCausalLM": ("MistralModel", "MistralDecoderLayer", "MistralAttention"),
    "Qwen2ForCausalLM": ("Qwen2Model", "Qwen2DecoderLayer", "Qwen2Attention"),
}
"""Causal LMs whose forward is Llama's, by class name, with their decoder, layer and
attention classes (checked by exact class: a subclass may compute more)."""


def _decoder(model: Any) -> Any:
    """``model.model`` where ``model`` is one of :data:`_DECODERS`' whose layers are too."""
    names = _DECODERS.get(type(model).__name__)
    module = type(model).__module__
    if names is None or not module.startswith("transformers.models."):
        raise NotCovered(f"{type(model).__name__} is not a Llama, Mistral or Qwen2 causal LM")
    decoder: Any = getattr(model, "model", None)
    if type(decoder).__name__ != names[0] or not len(getattr(decoder, "layers", ())):
        raise NotCovered(f"its decoder is {type(decoder).__name__}, not {names[0]}")
    for layer in decoder.layers:
        kinds = (type(layer).__name__, type(getattr(layer, "self_attn", None)).__name__)
        if kinds != names[1:]:
            raise NotCovered(f"a layer is {kinds}, not {names[1:]}")
        if getattr(layer.self_attn, "sliding_window", None) is not None:
            raise NotCovered("a layer attends through a sliding window")
    return decoder


def _kv_heads(config: Any) -> int:
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


def _layer(layer: Any, kernels: Kernels, shape: tuple[int, int, int]) -> LeanLayer:
    """One decoder layer's native pieces; NotCovered where one is not the native swap."""
    heads, kv_heads, dim = shape
    attn, mlp = layer.self_attn, layer.mlp
    owner = _joined(attn, ("q_proj", "k_proj", "v_proj"))
    if owner.widths != (heads * dim, kv_heads * dim, kv_heads * dim):
        raise NotCovered(f"the joined q/k/v is {owner.widths} wide")
    if not isinstance(mlp, NativeGatedMLP):
        raise NotCovered(f"an MLP is {type(mlp).__name__}, not the native gated MLP")
    return LeanLayer(
        _norm(layer.input_layernorm, "an input norm"),
        _linear(owner.joined, kernels),
        _linear(attn.o_proj, kernels),
        _norm(layer.post_attention_layernorm, "a post-attention norm"),
        _linear(mlp.gate_up, kernels),
        mlp.width,
        _linear(mlp.down_proj, kernels),
        float(attn.scaling),
        (owner.joined, attn.o_proj, mlp.gate_up, mlp.down_proj),
    )


def _joined(attn: Any, names: tuple[str, ...]) -> JoinedProjection:
    """The one JoinedProjection whose parts ``names`` are, in order."""
    found = [getattr(attn, name, None) for name in names]
    parts = [p for p in found if isinstance(p, ProjectionPart)]
    if len(parts) != len(names):
        raise NotCovered("q/k/v are not joined into one projection")
    owners = {id(p.__dict__["owner"]) for p in parts}
    if len(owners) != 1 or [p.part for p in parts] != [0, 1, 2]:
        raise NotCovered("q/k/v are not the parts of one joined projection")
    owner: JoinedProjection = parts[0].__dict__["owner"]
    return owner


def _norm(module: Any, what: str) -> NativeRMSNorm:
    if not isinstance(module, NativeRMSNorm):
        raise NotCovered(f"{what} is {type(module).__name__}, not the native RMS norm")
    return module


def _linear(module: Any, kernels: Kernels) -> Linear:
    """A native linear layer as a direct door call (its module call and reshapes cost ~5 us
    a layer); another module (a joined projection split by format) as its own forward.
    NotCovered for a layer the native linear kernel does not run."""
    if isinstance(module, NativeLinearLayer):

        def linear(x: torch.Tensor) -> torch.Tensor:
            # .weight: the packed weight over the buffer as it stands (see the layer)
            return kernels.linear(x, module.weight, module.bias)

        return linear
    from prefixkv.engine.native_linear import SplitLinearLayer

    if isinstance(module, SplitLinearLayer):
        forward: Linear = module.forward
        return forward
    raise NotCovered(f"a linear layer is {type(module).__name__}, not the native kernel's")
