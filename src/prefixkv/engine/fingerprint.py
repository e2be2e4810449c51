"""The model fingerprint that names KV blocks stored below RAM (see :mod:`prefixkv.tiers`).

KV blocks written by one process must never be served to another whose arithmetic could
give other bits: another model, the same weights in another dtype or KV layout, or the same
weights computed another way. The fingerprint hashes

- every tensor of the model's state dict (name, dtype, shape and bytes, in name order), the
  KV layout, and, for a model whose attention is more than plain causal attention on every
  layer, what more (:func:`attention_reach`: each layer's kind, the window, the logit cap;
  the same weights with another window compute other KV). A weight packed for oneDNN (:mod:`prefixkv.engine.linear`) is hashed as its
  plain values under a name marking the kernel, one packed for the native kernel as its
  column blocks (a buffer named ``packed``), so the linear kernel is named by the weights;
  a token embedding held narrow (:mod:`prefixkv.engine.embedding`) as its rows and format,
  one read out of a tied head (:mod:`prefixkv.engine.tied_embedding`) as the head's format;
- the :class:`Arithmetic`: which attention computes the KV (the batch runner's kernel, or
  the model's own attention under the serial backend), the native kernel library's identity
  (sources, flags, compiler, the CPU target it was built for) where a native kernel runs,
  PyTorch's version and build (MKL, oneDNN, the CPU capability it dispatches to) and the
  machine's CPU, and the thread count where PyTorch's own kernels compute (their reductions
  may split by thread; the native kernels' sums do not depend on it).

Two processes that load the same weights the same way with the same settings on the same
kind of machine agree on it; anything that may change a rounding does not. That is cautious:
replicas on different CPUs never share KV, even where their bits would happen to agree.
Costs one pass over the weights (~0.1 s for SmolLM2's 540 MB in fp32 here). The rest of
the config (rotary base, norm epsilon) is not hashed: a checkpoint's weights come with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from prefixkv.cache.layout import KVLayout
from prefixkv.extras import require


@dataclass(frozen=True)
class Arithmetic:
    """What, besides the weights and the KV layout, decides the bits of the KV a model
    computes. Every field is text or a number that two processes compare as is."""

    attention: str
    """``batch:<kernel>`` (the batch runner's attention kernel, ``native`` or ``torch``) or
    ``serial:<implementation>`` (the model's own attention, e.g. ``sdpa``)."""
    kernels: str
    """:func:`prefixkv.kernels.build.identity` where a native kernel computes, else
    ``none``."""
    platform: str
    """PyTorch's version and build configuration, and the machine's CPU model and flags."""
    threads: int
    """Threads PyTorch's own kernels use; 0 where only native kernels compute the linear
    layers and attention (each of their outputs is one fixed-order sum): not where a
    projection is left to PyTorch (a plain ``nn.Linear``, GPT-2's ``Conv1D``)."""

    def encode(self) -> bytes:
        return repr(
            ("arithmetic-v1", self.attention, self.kernels, self.platform, self.threads)
        ).encode()


def serial_attention(model: torch.nn.Module) -> str:
    """The :attr:`Arithmetic.attention` of ``model`` run by the serial engine: the model's own
    attention implementation (transformers' setting, e.g. ``sdpa``)."""
    config: Any = model.config
    return f"serial:{config._attn_implementation}"


def arithmetic(model: torch.nn.Module, attention: str, threads: int) -> Arithmetic:
    """The Arithmetic of ``model`` (its linear kernel already installed) attended by
    ``attention`` (see :attr:`Arithmetic.attention`) with ``threads`` PyTorch threads.
    Raises ValueError for an ``attention`` of another form."""
    from transformers.pytorch_utils import Conv1D

    from prefixkv.engine.native_linear import NativeLinearLayer
    from prefixkv.kernels.target import cpu_flags

    runner, _, kernel = attention.partition(":")
    if runner not in ("batch", "serial") or not kernel:
        raise ValueError(f"attention must be 'batch:KERNEL' or 'serial:IMPL', got {attention!r}")
    native_linear = any(isinstance(m, NativeLinearLayer) for m in model.modules())
    native_attention = attention == "batch:native"
    kernels = "none"
    if native_linear or native_attention:
        from prefixkv.kernels.build import identity

        kernels = identity()
    build = hashlib.sha256(torch.__config__.show().encode()).hexdigest()[:16]
    platform = f"torch {torch.__version__} build {build}\n{cpu_flags()}"
    # A projection the linear kernels do not replace (GPT-2's Conv1D) runs on PyTorch's own.
    torch_projections = any(isinstance(m, (torch.nn.Linear, Conv1D)) for m in model.modules())
    only_native = native_linear and native_attention and not torch_projections
    return Arithmetic(attention, kernels, platform, 0 if only_native else threads)


def attention_reach(config: Any) -> tuple[bytes, ...]:
    """What the layers' attention does beyond plain causal attention, as fingerprint parts:
    none for a model whose every layer is full attention without a logit cap (their
    fingerprints are as before windows were served), else one naming each layer's kind, the
    window and the cap."""
    from prefixkv.engine.kvbridge import layer_kinds

    text = config.get_text_config(decoder=True)
    kinds = layer_kinds(config)
    softcap = getattr(text, "attn_logit_softcapping", None)
    if set(kinds) == {"full_attention"} and softcap is None:
        return ()
    window = getattr(text, "sliding_window", None)
    return (repr(("attention-v1", kinds, window, softcap)).encode(),)


def model_fingerprint(model: torch.nn.Module, layout: KVLayout, computed: Arithmetic) -> bytes:
    """16 bytes naming ``model``'s weights, ``layout``, its :func:`attention_reach` and how
    the KV is ``computed``. Needs the ``[tiers]`` extra."""
    require("tiers", "a model fingerprint")
    from prefixkv.engine.embedding import RowEmbedding
    from prefixkv.engine.native_linear import NativeLinearLayer
    from prefixkv.engine.tied_embedding import HeadEmbedding
    from prefixkv.tiers.naming import fingerprint_of

    config: Any = model.config
    parts = [repr(layout).encode(), computed.encode(), *attention_reach(config)]
    # A packed weight's or embedding's bytes are read per its format (two formats' bytes
    # could coincide).
    parts += [
        f"{name}:{module.format}".encode()
        for name, module in model.named_modules()
        if isinstance(module, NativeLinearLayer | RowEmbedding)
    ]  # an embedding read out of a tied head: its format, the head's bytes already hashed
    parts += [
        f"{name}:head:{module.format}".encode()
        for name, module in model.named_modules()
        if isinstance(module, HeadEmbedding)
    ]
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.is_mkldnn:
            name, tensor = f"{name}@onednn", tensor.to_dense()
        flat = tensor.detach().to("cpu").contiguous().view(-1)
        parts += [name.encode(), f"{flat.dtype}{tuple(tensor.shape)}".encode()]
        parts.append(bytes(flat.view(torch.uint8).numpy().data) if flat.numel() else b"")
    return fingerprint_of(*parts)
