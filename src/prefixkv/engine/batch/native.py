"""The ``native`` attention kernel: a whole step, decoding and prefill, in one C call per layer.

The PyTorch kernel (:mod:`.cascade`) spends most of a decode step's attention in per-op
overhead (~11 small ops per group and layer), and SDPA runs prefill chunks under a full mask
(measured in ``docs/decisions.md``, "Native attention").
``prefixkv/kernels/csrc/attention.c`` does the arithmetic in one call: the step is planned
once into work items (below), and each layer hands the items, the query and the pool layer
to the library, which runs them on PyTorch's threads. Calls go through the checked door
(:class:`prefixkv.kernels.ops.Kernels`); the items' index arrays are checked once per step
(:class:`prefixkv.kernels.items.AttendItems`).

An item holds up to ``lanes // groups`` query tokens (16 float32 lanes: five SmolLM2 tokens
of three query heads per kv head) and the context slots they read, each token seeing a
prefix of them (``sees``):

- decoding sequences: a group's shared context once, then each member's own tokens, flagged
  with the member that sees them; a group with more members is split into several items, a
  sequence sharing nothing is an item of one;
- a prefill chunk: consecutive queries, over the context up to the last of them; each sees
  the tokens up to its own position (causal, no mask tensor).

A layer with a sliding window or capped logits (:mod:`.band`) has a plan of its own
(:meth:`NativeKernel.plan_band`): every sequence alone, its items' tokens starting where
the window of their first query starts, each query seeing from its own window's start
(``first``), the cap applied by the library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from prefixkv.engine.batch.cascade import partition, slots_of
from prefixkv.kernels.build import NativeUnavailable
from prefixkv.kernels.items import AttendItems
from prefixkv.kernels.ops import Kernels, load

if TYPE_CHECKING:
    from prefixkv.engine.batch.attention import SeqSpan
    from prefixkv.engine.batch.band import Band


@dataclass(frozen=True)
class NativeKernel:
    """The ``native`` attention kernel (see :mod:`.kernels`)."""

    kernels: Kernels
    per_item: int  # query tokens per work item: the library's lanes // query heads per kv head
    name = "native"

    @staticmethod
    def create(groups: int, dtype: torch.dtype, device: torch.device) -> NativeKernel:
        """Raises NativeUnavailable where the kernel cannot run: not float32 on the CPU,
        more query heads per kv head than its lanes, or no library (see
        :func:`prefixkv.kernels.build.load`)."""
        if device.type != "cpu" or dtype != torch.float32:
            raise NativeUnavailable(
                f"the native attention kernel runs float32 on the CPU, not {dtype} on {device}"
            )
        kernels = load()
        lanes = kernels.lanes
        if groups > lanes:
            raise NativeUnavailable(
                f"the native kernel holds {lanes} query heads per kv head, the model has {groups}"
            )
        return NativeKernel(kernels, lanes // groups)

    def plan(
        self, spans: Seq[SeqSpan], device: torch.device
    ) -> tuple[NativePlan, tuple[SeqSpan, ...]]:
        found, alone = partition([s for s in spans if s.count == 1])
        items = _Items(self.per_item)
        for runs, members in [*found, *[(s.runs, [s]) for s in alone]]:
            items.add_group(runs, members)
        for span in spans:
            if span.count > 1:
                items.add_prefill(span)
        return items.plan(self.kernels, math.inf), ()

    def plan_band(
        self, spans: Seq[SeqSpan], band: Band, device: torch.device
    ) -> tuple[NativePlan, tuple[SeqSpan, ...]]:
        """The plan of a layer with ``band``'s window and cap, for every span (none left).
        Pure."""
        items = _Items(self.per_item)
        for span in spans:
            items.add_window(span, band.window)
        return items.plan(self.kernels, math.inf if band.softcap is None else band.softcap), ()


class _Items:
    """Work items under construction (see the module docstring), as flat lists."""

    def __init__(self, per_item: int) -> None:
        self.per_item = per_item
        self.rows: list[int] = []
        self.sees: list[int] = []
        self.first: list[int] = []
        self.slots: list[np.ndarray] = []
        self.owners: list[np.ndarray] = []
        self.member_start, self.token_start = [0], [0]

    def _close(self, tokens: int) -> None:
        self.member_start.append(len(self.rows))
        self.token_start.append(self.token_start[-1] + tokens)

    def add_group(self, runs: tuple[tuple[int, int], ...], members: list[SeqSpan]) -> None:
        """Decoding sequences whose contexts start with ``runs``: the runs once per item,
        then each member's own tokens."""
        shared = slots_of(runs)
        for first in range(0, len(members), self.per_item):
            chunk = members[first : first + self.per_item]
            own = [slots_of(m.runs)[len(shared) :] for m in chunk]
            tokens = len(shared) + sum(len(o) for o in own)
            self.slots += [shared, *own]
            self.owners.append(np.full(len(shared), -1, dtype=np.int32))
            self.owners += [np.full(len(o), i, dtype=np.int32) for i, o in enumerate(own)]
            self.rows += [m.start for m in chunk]
            self.sees += [tokens] * len(chunk)
            self.first += [0] * len(chunk)
            self._close(tokens)

    def add_prefill(self, span: SeqSpan) -> None:
        """A prefill chunk: items of consecutive queries, each over the context up to its
        last query; query j sees the tokens up to its own position (causal)."""
        context = slots_of(span.runs)
        before = span.context - span.count
        for first in range(0, span.count, self.per_item):
            size = min(self.per_item, span.count - first)
            tokens = before + first + size
            self.slots.append(context[:tokens])
            self.owners.append(np.full(tokens, -1, dtype=np.int32))
            self.rows += range(span.start + first, span.start + first + size)
            self.sees += range(before + first + 1, tokens + 1)
            self.first += [0] * size
            self._close(tokens)

    def add_window(self, span: SeqSpan, window: int | None) -> None:
        """One sequence's queries under a sliding ``window`` (None: none), in items of
        consecutive queries: an item's tokens run from its first query's window start to its
        last query; query position ``p`` sees from ``p - window + 1`` to ``p``."""
        context = slots_of(span.runs)
        before = span.context - span.count
        for offset in range(0, span.count, self.per_item):
            size = min(self.per_item, span.count - offset)
            positions = range(before + offset, before + offset + size)
            starts = [0 if window is None else max(0, p - window + 1) for p in positions]
            low = starts[0]
            self.slots.append(context[low : positions[-1] + 1])
            self.owners.append(np.full(positions[-1] + 1 - low, -1, dtype=np.int32))
            self.rows += range(span.start + offset, span.start + offset + size)
            self.sees += [p + 1 - low for p in positions]
            self.first += [s - low for s in starts]
            self._close(positions[-1] + 1 - low)

    def plan(self, kernels: Kernels, softcap: float) -> NativePlan:
        """The items as checked arrays (ValueError should they not describe valid items),
        their scores capped at ``softcap`` (``math.inf``: not capped)."""
        return NativePlan(
            kernels,
            AttendItems(
                self.member_start,
                self.rows,
                self.sees,
                self.first,
                self.token_start,
                np.concatenate(self.slots) if self.slots else np.zeros(0, dtype=np.int64),
                np.concatenate(self.owners) if self.owners else np.zeros(0, dtype=np.int32),
            ),
            softcap,
        )


@dataclass(frozen=True)
class NativePlan:
    """One step's work items (an AttentionPlan): the checked arrays the library reads."""

    kernels: Kernels
    items: AttendItems
    softcap: float
    """Scaled scores ``s`` become ``softcap * tanh(s / softcap)``; ``math.inf``: left."""

    def store(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        new_keys: torch.Tensor,
        new_values: torch.Tensor,
        slots: torch.Tensor,
    ) -> None:
        # one C call instead of two index_copy_ (~25 us each for a 16-token decode step)
        self.kernels.store(keys, values, new_keys, new_values, slots)

    def attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        out: torch.Tensor,
        scale: float,
    ) -> None:
        if query.stride(-1) != 1:
            query = query.contiguous()
        self.kernels.attend(self.items, query, keys, values, out, scale, self.softcap)
