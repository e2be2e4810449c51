"""What each linear layer's weight is streamed as by the native kernel: ``--weights``.

A CPU decode step reads every weight once, so the bytes per weight set the step's floor.
A layer's weight comes either loaded (a float32 or bf16 parameter) or, for a model opened
from a GGUF (:mod:`prefixkv.engine.gguf_load`), as the file's rows with the parameter left
on the meta device; a layer is packed from one or the other, one layer at a time, so the
model never exists whole in float32.

``auto`` (the default) keeps each layer in the narrowest format that holds its values
exactly: the file's own blocks where the kernel reads their format
(:data:`prefixkv.kernels.formats.QUANTIZED`), else bf16 where every value is a bf16 value
(a bf16 checkpoint), else fp32; joined siblings whose blocks differ in format (a Q6_K
attn_v beside Q4_K q and k) are packed run by run (:meth:`WeightFormat.runs`). Each kept format dequantizes to exactly the fp32 value
gguf's reference (and so transformers' load) computes, and the kernel runs the same
multiply-add chain on it (:mod:`prefixkv.kernels.formats`), so outputs are those of
``fp32`` bit for bit; each packing of the file's blocks is spot-checked against gguf's
de-quantization (its first and last column blocks) and one that differs is packed from the
de-quantized values instead (logged). A layer whose file rows are in a GGML type the
kernel does not read (F16, Q5_0, Q2_K, IQ*, ...) is de-quantized
and rounded to bf16 (a precision change only where a value is not a bf16 value;
:func:`unkept_formats` names them for the one notice). ``bf16`` rounds every layer to
bf16: half fp32's bytes, not exact against it (opt-in). ``fp32``: every layer in float32.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

import numpy as np
import torch

from prefixkv.engine.gguf_blocks import RawWeight, ggml_type
from prefixkv.engine.gguf_load import dequantize_raw
from prefixkv.kernels.formats import (
    BLOCK,
    CODES,
    QUANTIZED,
    PackedWeight,
    exact_bf16,
    pack_bf16,
    pack_f32,
    pack_gguf,
    unpack,
)

log = logging.getLogger("prefixkv.engine")

WEIGHTS = ("auto", "fp32", "bf16")
Rows = Mapping[torch.nn.Module, RawWeight]
"""The file's rows by the layer they were found for (before joining)."""
NO_ROWS: Rows = MappingProxyType({})


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


def float_weight(
    layer: torch.nn.Linear, sources: Sequence[torch.nn.Linear], rows: Rows
) -> torch.Tensor:
    """``layer``'s weight as float32 ``[out, in]``: the loaded one (widened exactly from
    bf16), or for a weight on the meta device its sources' rows de-quantized and joined (a
    new tensor: one layer's). KeyError for a meta weight whose sources have no rows."""
    weight = layer.weight.detach()
    if not weight.is_meta:
        return weight.to(torch.float32)
    return torch.cat([dequantize_raw(rows[source]) for source in sources])


class Fp32Weights:
    """Every layer in float32."""

    name = "fp32"

    def __init__(self, rows: Rows = NO_ROWS) -> None:
        self.rows = rows

    def pack(self, layer: torch.nn.Linear, sources: Sequence[torch.nn.Linear]) -> PackedWeight:
        return pack_f32(float_weight(layer, sources, self.rows))

    def runs(self, sources: Sequence[torch.nn.Linear]) -> list[int]:
        return [len(sources)]


AS_LOADED = Fp32Weights()
"""The default: every layer as loaded."""


class Bf16Weights:
    """Every layer rounded to bf16 (round to nearest even): not exact against fp32."""

    name = "bf16"

    def __init__(self, rows: Rows = NO_ROWS) -> None:
        self.rows = rows

    def pack(self, layer: torch.nn.Linear, sources: Sequence[torch.nn.Linear]) -> PackedWeight:
        if layer.weight.dtype == torch.bfloat16 and not layer.weight.is_meta:
            return pack_bf16(layer.weight.detach())
        return pack_bf16(float_weight(layer, sources, self.rows).to(torch.bfloat16))

    def runs(self, sources: Sequence[torch.nn.Linear]) -> list[int]:
        return [len(sources)]


class ExactWeights:
    """The narrowest exact format per layer (``auto``): the file's blocks where every source
    has them in one format the kernel reads; else bf16 where exact; else fp32, or bf16
    rounded for rows in a type the kernel does not read (see the module docstring)."""

    name = "auto"

    def __init__(self, rows: Rows = NO_ROWS) -> None:
        self.rows = rows
        self.converted: Counter[str] = Counter()
        """File tensors per GGML type the kernel does not read, packed as bf16 so far."""

    def pack(self, layer: torch.nn.Linear, sources: Sequence[torch.nn.Linear]) -> PackedWeight:
        """Mutates :attr:`converted` only."""
        weight = layer.weight.detach()
        if weight.dtype == torch.bfloat16 and not weight.is_meta:
            return pack_bf16(weight)  # a bf16 checkpoint's layer, as loaded
        raws = [self.rows[s] for s in sources] if weight.is_meta else []
        packed = _blocks(raws)
        if packed is not None:
            return packed
        values = float_weight(layer, sources, self.rows)
        unread = bool(raws) and all(raw.format not in CODES for raw in raws)
        if unread:  # all: a sibling the kernel reads keeps the layer exact (fp32)
            self.converted.update(raw.format for raw in raws)
        narrow = exact_bf16(values)
        if narrow is not None:
            return pack_bf16(narrow)
        return pack_bf16(values.to(torch.bfloat16)) if unread else pack_f32(values)

    def runs(self, sources: Sequence[torch.nn.Linear]) -> list[int]:
        """Runs of sources whose kept blocks share a format (sources without any: one kind)."""
        raws = [self.rows.get(source) for source in sources]
        kinds = [raw.format if raw is not None and raw.format in QUANTIZED else "" for raw in raws]
        return [len(list(run)) for _, run in itertools.groupby(kinds)]


def _blocks(raws: Sequence[RawWeight]) -> PackedWeight | None:
    """The joined file blocks of ``raws`` (a layer's sources, in order) if they share one
    format the kernel reads and the packing passes :func:`_spot_check`, else None."""
    formats = {raw.format for raw in raws}
    if len(formats) != 1 or next(iter(formats)) not in QUANTIZED:
        return None  # no rows, siblings in different formats, or a format not read
    # Siblings' rows stacked, then packed once: GGUF rows are independent in every type.
    rows = raws[0].rows if len(raws) == 1 else np.concatenate([raw.rows for raw in raws])
    packed = pack_gguf(raws[0].format, rows, raws[0].in_features)
    if not _spot_check(packed, raws):
        log.warning("%s packing differs from gguf's de-quantization: packed from the "
                    "de-quantized values", packed.format)  # fmt: skip
        return None
    return packed


def _spot_check(packed: PackedWeight, raws: Sequence[RawWeight]) -> bool:
    """True if the first and last column blocks of ``packed`` unpack to gguf's reference
    de-quantization of those rows, bit for bit (-0.0 and 0.0 told apart)."""
    last = packed.data.shape[0] - 1
    checks = {0: _joined_rows(raws, 0, BLOCK), last: _joined_rows(raws, last * BLOCK, None)}
    for block, file_rows in checks.items():
        part = PackedWeight(packed.format, packed.in_features, file_rows.shape[0],
                            packed.data[block : block + 1])  # fmt: skip
        want = torch.from_numpy(_dequantized(file_rows, raws[0].format))
        if not torch.equal(unpack(part).view(torch.int32), want.view(torch.int32)):
            return False
    return True


def _joined_rows(raws: Sequence[RawWeight], start: int, stop: int | None) -> np.ndarray:
    """Rows ``start:stop`` of the sources' rows stacked (copies only those rows)."""
    picked, offset = [], 0
    for raw in raws:
        count = raw.rows.shape[0]
        end = offset + count if stop is None else min(stop, offset + count)
        if end > start and offset < end:
            picked.append(raw.rows[max(start - offset, 0) : end - offset])
        offset += count
    return np.concatenate(picked)


def _dequantized(rows: np.ndarray, format: str) -> np.ndarray:
    """gguf's reference de-quantization of ``rows``: float32 ``[n, in]``, contiguous."""
    from gguf.quants import dequantize

    return np.ascontiguousarray(dequantize(rows, ggml_type(format)), dtype=np.float32)


def weight_format(name: str, rows: Mapping[str, RawWeight], model: torch.nn.Module) -> WeightFormat:
    """The format called ``name`` (one of :data:`WEIGHTS`); ``rows``: the file's rows by
    module name of the layers whose weight is on the meta device (empty for a model loaded
    whole). Call before any layer is swapped. ValueError for another name."""
    by_module = {model.get_submodule(n): raw for n, raw in rows.items()}
    if name == "fp32":
        return Fp32Weights(by_module)
    if name == "bf16":
        return Bf16Weights(by_module)
    if name == "auto":
        return ExactWeights(by_module)
    raise ValueError(f"unknown weights {name!r}; choose one of {', '.join(WEIGHTS)}")
