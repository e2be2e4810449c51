"""What attends a step's tokens over the pool: the attention kernel.

Two kernels, one contract:

- ``torch`` (:mod:`.cascade`): PyTorch ops. Decoding sequences sharing a prefix attend it
  together; every other decoding sequence and every prefill chunk is attended one by one
  (:func:`.attention.attend`). The reference, and the kernel for any device and dtype.
- ``native`` (:mod:`.native`): one C call per layer for the whole step, decoding sequences
  and prefill chunks alike, float32 on the CPU; built on first use with the system's C
  compiler (:mod:`prefixkv.kernels.build`).

``auto`` takes ``native`` where it runs and ``torch`` otherwise. Both equal plain causal
attention over each sequence's context up to float rounding
(tests/kernels/test_attention.py). A layer with a sliding window or capped logits has a plan
of its own (``plan_band``): the native kernel windows and caps in C, the torch kernel leaves
every sequence to :func:`.band.attend_band` (tests/engine/batch/test_band.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, Protocol

import torch

from prefixkv.engine.batch.cascade import CascadeKernel
from prefixkv.engine.batch.native import NativeKernel
from prefixkv.kernels.build import NativeUnavailable

if TYPE_CHECKING:
    from prefixkv.engine.batch.attention import SeqSpan
    from prefixkv.engine.batch.band import Band

log = logging.getLogger("prefixkv.engine")

KERNELS = ("auto", "native", "torch")


class AttentionPlan(Protocol):
    """The sequences of one step a kernel attends, arranged once per step (not per layer)."""

    def store(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        new_keys: torch.Tensor,
        new_values: torch.Tensor,
        slots: torch.Tensor,
    ) -> None:
        """Write the step's new keys and values (``[kv_heads, T, dim]``, any strides) into
        a pool layer's ``keys``/``values`` (``[kv_heads, slots, dim]``) at ``slots``
        (``[T]`` int64, distinct). Mutates ``keys`` and ``values`` only."""
        ...

    def attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        out: torch.Tensor,
        scale: float,
    ) -> None:
        """``query``: ``[heads, T, dim]``, the step's queries; ``keys``/``values``: a pool
        layer ``[kv_heads, slots, dim]``. Writes the attention of each planned sequence into
        its rows of ``out`` (``[T, heads, dim]``) and mutates nothing else."""
        ...


class AttentionKernel(Protocol):
    name: str

    def plan(
        self, spans: Seq[SeqSpan], device: torch.device
    ) -> tuple[AttentionPlan, tuple[SeqSpan, ...]]:
        """The plan for the spans this kernel attends, and the spans it leaves to be
        attended one by one (:func:`.attention.attend`). Pure."""
        ...

    def plan_band(
        self, spans: Seq[SeqSpan], band: Band, device: torch.device
    ) -> tuple[AttentionPlan, tuple[SeqSpan, ...]]:
        """The plan for a layer with ``band``'s window and cap (:mod:`.band`), and the spans
        it leaves to :func:`.band.attend_band`. Pure."""
        ...


def attention_kernel(
    name: str, heads: int, kv_heads: int, dtype: torch.dtype, device: torch.device
) -> AttentionKernel:
    """The kernel called ``name`` (one of :data:`KERNELS`) for a model with ``heads`` query
    and ``kv_heads`` KV heads whose KV is ``dtype`` on ``device``. ``auto``: native where it
    runs, else torch (logged). Raises ValueError for another name, NativeUnavailable when
    ``native`` is asked for where it cannot run."""
    if name not in KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; choose one of {', '.join(KERNELS)}")
    if name == "torch":
        return CascadeKernel()
    try:
        return NativeKernel.create(heads // kv_heads, dtype, device)
    except NativeUnavailable as exc:
        if name == "native":
            raise
        log.warning("attention: PyTorch ops (%s)", exc)
        return CascadeKernel()
