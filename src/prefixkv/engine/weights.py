"""What each linear layer's weight is streamed as by the native kernel: ``--weights``.

A CPU decode step reads every weight once, so the bytes per weight set the step's floor.
``auto`` (the default) keeps each layer in the narrowest format that holds its loaded
weights exactly: the GGUF file's own Q8_0, Q4_0, Q4_1, Q4_K, Q5_K or Q6_K blocks (found by
:mod:`prefixkv.engine.gguf_blocks`; joined siblings in different formats are packed run by
run, :meth:`WeightFormat.runs`), else bf16 where every value is a bf16 value (a bf16
checkpoint), else fp32. Each of these formats dequantizes to exactly the fp32 value the
load path computed, and the kernel runs the same multiply-add chain on it
(:mod:`prefixkv.kernels.formats`), so outputs are those of ``fp32`` bit for bit; a packing
is compared with the loaded weight before it is used, and a layer that does not match
stays fp32 (logged). ``bf16`` rounds every layer to bf16: half fp32's bytes, but not exact
against it (opt-in). ``fp32``: every layer as loaded.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from prefixkv.engine.gguf_blocks import RawWeight
from prefixkv.kernels.formats import (
    QUANTIZED,
    PackedWeight,
    concat,
    exact_bf16,
    pack_bf16,
    pack_f32,
    pack_gguf,
    unpack,
)

log = logging.getLogger("prefixkv.engine")

WEIGHTS = ("auto", "fp32", "bf16")


class WeightFormat(Protocol):
    """Packs one linear layer's weight for the native kernel."""

    name: str

    def pack(self, layer: torch.nn.Linear, sources: Sequence[torch.nn.Linear]) -> PackedWeight:
        """``layer``'s weight ``[out, in]`` packed; ``sources``: the layers whose rows it
        holds, in order (see :data:`prefixkv.engine.fused.MakeLayer`). Mutates nothing."""
        ...

    def runs(self, sources: Sequence[torch.nn.Linear]) -> list[int]:
        """How many consecutive ``sources`` pack in one format, run by run (one run of all
        of them but where siblings keep blocks of different formats, e.g. a Q6_K attn_v
        beside Q4_K q and k). Mutates nothing."""
        ...


class Fp32Weights:
    """Every layer as loaded (float32)."""

    name = "fp32"

    def pack(self, layer: torch.nn.Linear, sources: Sequence[torch.nn.Linear]) -> PackedWeight:
        return pack_f32(layer.weight.detach())

    def runs(self, sources: Sequence[torch.nn.Linear]) -> list[int]:
        return [len(sources)]


AS_LOADED = Fp32Weights()
"""The default: every layer as loaded."""


class Bf16Weights:
    """Every layer rounded to bf16 (round to nearest even): not exact against fp32."""

    name = "bf16"

    def pack(self, layer: torch.nn.Linear, sources: Sequence[torch.nn.Linear]) -> PackedWeight:
        return pack_bf16(layer.weight.detach().to(torch.bfloat16))

    def runs(self, sources: Sequence[torch.nn.Linear]) -> list[int]:
        return [len(sources)]


class ExactWeights:
    """The narrowest exact format per layer (``auto``): the file's blocks where ``raw`` has
    every source's, verified; else bf16 where exact; else fp32."""

    name = "auto"

    def __init__(self, raw: Mapping[torch.nn.Module, RawWeight]) -> None:
        """``raw``: the file's blocks by the layer they were found for (before joining)."""
        self.raw = raw

    @classmethod
    def for_model(cls, model: torch.nn.Module, raw: Mapping[str, RawWeight]) -> ExactWeights:
        """``raw`` by module name (as :func:`prefixkv.engine.gguf_blocks.raw_weights` returns
        it), keyed by module; call before any layer is swapped."""
        return cls({model.get_submodule(name): weight for name, weight in raw.items()})

    def pack(self, layer: torch.nn.Linear, sources: Sequence[torch.nn.Linear]) -> PackedWeight:
        weight = layer.weight.detach()
        packed = self._blocks(weight, sources)
        if packed is not None:
            return packed
        narrow = exact_bf16(weight)
        return pack_f32(weight) if narrow is None else pack_bf16(narrow)

    def runs(self, sources: Sequence[torch.nn.Linear]) -> list[int]:
        """Runs of sources whose kept blocks share a format (sources without any: one kind)."""
        raws = [self.raw.get(source) for source in sources]
        kinds = [raw.format if raw is not None and raw.format in QUANTIZED else "" for raw in raws]
        return [len(list(run)) for _, run in itertools.groupby(kinds)]

    def _blocks(
        self, weight: torch.Tensor, sources: Sequence[torch.nn.Linear]
    ) -> PackedWeight | None:
        """The file's blocks for ``weight``, if every source has them in one kept format and
        they dequantize to ``weight`` bit for bit."""
        found = [self.raw.get(source) for source in sources]
        raws = [raw for raw in found if raw is not None and raw.format in QUANTIZED]
        if len(raws) != len(found) or len({raw.format for raw in raws}) != 1:
            return None  # a source without kept blocks, or siblings in different formats
        packed = concat([pack_gguf(raw.format, raw.rows, raw.in_features) for raw in raws])
        # The file's blocks were verified against each source; this checks the packing and
        # the join (-0.0 and 0.0 told apart: bit patterns, not values).
        if not torch.equal(unpack(packed).view(torch.int32), weight.view(torch.int32)):
            log.warning("%s packing differs from the loaded weight: kept as fp32", packed.format)
            return None
        return packed


def weight_format(name: str, raw: Mapping[str, RawWeight], model: torch.nn.Module) -> WeightFormat:
    """The format called ``name`` (one of :data:`WEIGHTS`); ``raw``: the file's blocks by
    module name (empty for a checkpoint without quantized blocks). ValueError for another
    name."""
    if name == "fp32":
        return AS_LOADED
    if name == "bf16":
        return Bf16Weights()
    if name == "auto":
        return ExactWeights.for_model(model, raw)
    raise ValueError(f"unknown weights {name!r}; choose one of {', '.join(WEIGHTS)}")
