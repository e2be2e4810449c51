"""The record each family module fills in: :class:`Family` for a family prefixkv serves,
:class:`Refused` for one it does not serve yet. Data only; the engine acts on it
(:mod:`prefixkv.engine.fused` joins the siblings, :mod:`prefixkv.engine.native_layers` swaps
the norms and MLPs, :mod:`prefixkv.engine.kvbridge` reads the layout)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from prefixkv.cache.layout import KVLayout

LLAMA_SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Projections that read one input, as transformers' Llama-style attention and MLP name
them: the query/key/value projections, and the MLP's gate and up projections."""


class UnsupportedModelError(TypeError):
    """The model has a layer kind prefixkv does not serve (only full and sliding-window
    attention), or its family is refused, so its prefixes cannot be reused as they are."""


def text_config(config: Any) -> Any:
    """The text decoder's config of ``config`` (itself for a text-only model)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def standard_layout(config: Any, dtype: torch.dtype) -> KVLayout:
    """The KV layout of a decoder whose config names its layers, heads and width as
    transformers' ``PretrainedConfig`` does (``num_hidden_layers``, ``num_attention_heads``,
    ``num_key_value_heads`` defaulting to the heads, ``head_dim`` defaulting to the width over
    the heads; GPT-2's ``n_layer``/``n_head``/``n_embd`` reach these names through its
    config's attribute map). Returns a new KVLayout; raises AttributeError for a config
    without layers or heads."""
    text = text_config(config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return KVLayout(text.num_hidden_layers, kv_heads, head_dim, dtype)


@dataclass(frozen=True)
class GatedMLP:
    """MLP modules computing ``down(SiLU(gate(x)) * up(x))``, which the native gated MLP
    replaces when their activation module is SiLU."""

    classes: tuple[type[torch.nn.Module], ...]
    """The transformers classes of such MLPs."""
    gate_up: tuple[str, ...]
    """Where the ``[gate columns | up columns]`` product comes from: two names, the gate and
    up projections that :mod:`prefixkv.engine.fused` joins (``gate_proj``, ``up_proj``); or
    one name, a projection the checkpoint already joined in that order (Phi-3's
    ``gate_up_proj``)."""
    activation: str
    """The attribute holding the activation module (``act_fn``, ``activation_fn``)."""
    down: str = "down_proj"
    """The attribute holding the down projection."""


@dataclass(frozen=True)
class Family:
    """What prefixkv knows about one model family (one or more ``model_type`` values)."""

    name: str
    model_types: tuple[str, ...]
    """``config.model_type`` values of this family (a multimodal model's text config's too)."""
    attention: str
    """What attention its layers use, in words (for the docs and the log)."""
    siblings: tuple[tuple[str, ...], ...]
    """Sets of ``nn.Linear`` attributes of one module that read one input, in output order,
    joined into one GEMM by :func:`prefixkv.engine.fused.join_siblings`."""
    norms: tuple[type[torch.nn.Module], ...]
    """Norm classes computing Llama's RMS norm, ``weight * x / sqrt(mean(x^2) +
    variance_epsilon)``, exactly: the native RMS norm replaces them."""
    mlps: tuple[GatedMLP, ...]
    """Gated-SiLU MLPs the native gated MLP replaces."""
    keeps: str
    """Which of its modules keep transformers' own and why (logged where nothing is
    swapped)."""
    layout: Callable[[Any, torch.dtype], KVLayout] = standard_layout
    """Its KV layout for a config and a dtype."""
    attn_implementation: str | None = None
    """The attention transformers must run for this family's own math where its default
    may drop a term (``eager`` for Gemma 2: transformers 5.6's default SDPA ignores the logit
    cap, 5.23 defaults to eager); None: transformers' default. The loader asks for it."""

    def model_kwargs(self) -> dict[str, str]:
        """The keyword arguments a transformers model of this family is built with
        (``from_pretrained``/``from_config``): its :attr:`attn_implementation`, if any."""
        if self.attn_implementation is None:
            return {}
        return {"attn_implementation": self.attn_implementation}

    offset_norms: tuple[type[torch.nn.Module], ...] = ()
    """Norm classes computing Gemma's RMS norm, ``(1 + weight) * x / sqrt(mean(x^2) +
    eps)`` in float32, exactly: the native RMS norm replaces them, its weight ``1 +
    weight``."""


@dataclass(frozen=True)
class Refused:
    """A family prefixkv does not serve yet, and why."""

    name: str
    model_types: tuple[str, ...]
    reason: str

    def error(self, model_type: str) -> UnsupportedModelError:
        """The error naming the model type, the family and the reason (returned, not raised)."""
        return UnsupportedModelError(
            f"model_type {model_type!r} ({self.name}) is not served by prefixkv: {self.reason}"
        )
