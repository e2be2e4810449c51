"""The token embedding held narrow: the GGUF file's own rows, or bf16 (``--weights``).

A lookup reads a few rows of the table (one per decode step and sequence, 512 per prefill
chunk), so the table need not be float32 in memory: :class:`RowEmbedding` keeps it as the
file's Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K rows (uint8 ``[vocab, row_bytes]``) or as bf16 ``[vocab, hidden]`` and
de-quantizes only the gathered rows, in torch, to float32. The de-quantization is gguf's
(``d * q``; Q4_0 ``d * (q - 8)``; Q4_1 ``d * q + m``, two roundings as gguf's reference; the
K-quants as :func:`prefixkv.kernels.kquants.dequantize`), so
every value is the float32 transformers loaded, bit for bit; :func:`install_embedding`
checks the whole table once against the loaded weight before swapping the module in.

- ``auto``: the file's quantized rows where :mod:`prefixkv.engine.gguf_blocks` found and
  verified them, else bf16 where every value is a bf16 value, else the float32
  ``nn.Embedding`` as loaded;
- ``bf16``: rounded to bf16 (round to nearest even, as the linear layers are): not exact;
- ``fp32``: as loaded.

Only a plain ``nn.Embedding`` (no ``max_norm``, float32 on the CPU) is replaced (Gemma's
scaled embedding computes more than a lookup), and only where no other parameter of the
model is its weight (a head tied to it and not packed by the native kernel still reads it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from prefixkv.engine.gguf_blocks import RawWeight, ggml_type
from prefixkv.engine.gguf_load import dequantize_raw
from prefixkv.engine.tied_embedding import shared_embedding
from prefixkv.kernels.formats import QUANTIZED, dequantize, exact_bf16, gguf_planes

__all__ = [
    "ROW_FORMATS",
    "RowEmbedding",
    "dequantize_rows",
    "input_rows",
    "install_embedding",
    "rounds",
]

log = logging.getLogger("prefixkv.engine")

ROW_FORMATS = ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "bf16")
_VERIFY_ROWS = 4096  # rows de-quantized at a time when checking a whole table
_SPOT_ROWS = 64  # rows at each end of a table of file rows checked against gguf's reference
_F32 = torch.float32


def dequantize_rows(format: str, rows: torch.Tensor, features: int) -> torch.Tensor:
    """``rows`` (uint8 ``[n, row_bytes]`` for a GGUF format, bf16 ``[n, features]``) as
    float32 ``[n, features]``, exactly as gguf's reference de-quantizes them (the kernels'
    :func:`~prefixkv.kernels.formats.dequantize`). Returns a new tensor; ValueError for a
    format not in :data:`ROW_FORMATS`."""
    if format == "bf16":
        return rows.to(torch.float32)
    if format not in QUANTIZED:
        raise ValueError(f"format: one of {ROW_FORMATS} expected, got {format!r}")
    return dequantize(format, gguf_planes(format, rows)).view(rows.shape[0], features)


class RowEmbedding(torch.nn.Module):
    """A lookup in a table held as ``rows`` in ``format`` (see :func:`dequantize_rows`);
    returns float32 ``[*ids.shape, embedding_dim]``. IndexError for an id outside the
    vocabulary (as ``nn.Embedding``)."""

    rows: torch.Tensor  # a buffer: what the model fingerprint hashes, with ``format``

    def __init__(self, format: str, rows: torch.Tensor, embedding_dim: int) -> None:
        super().__init__()
        if format not in ROW_FORMATS:
            raise ValueError(f"format: one of {ROW_FORMATS} expected, got {format!r}")
        self.format = format
        self.num_embeddings = rows.shape[0]
        self.embedding_dim = embedding_dim
        self.register_buffer("rows", rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # [n, row_bytes]: only the rows asked for. index_select, not rows[ids]: advanced
        # indexing went parallel from 8 ids and waited ~4 ms for a busy core (measured).
        picked = torch.index_select(self.rows, 0, ids.reshape(-1))
        values = dequantize_rows(self.format, picked, self.embedding_dim)
        return values.view(*ids.shape, self.embedding_dim)

    def table(self) -> torch.Tensor:
        """The whole table as float32 ``[vocab, embedding_dim]`` (a new tensor)."""
        parts = [
            dequantize_rows(
                self.format, self.rows[start : start + _VERIFY_ROWS], self.embedding_dim
            )
            for start in range(0, self.num_embeddings, _VERIFY_ROWS)
        ]
        return torch.cat(parts)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, format={self.format}"


def _replaceable(model: torch.nn.Module, embedding: torch.nn.Module) -> str | None:
    """Why ``embedding`` must stay as loaded, or None if a RowEmbedding may replace it."""
    if type(embedding) is not torch.nn.Embedding or embedding.max_norm is not None:
        return f"{type(embedding).__name__} is more than a plain lookup"
    weight = embedding.weight
    held = weight.device.type in ("cpu", "meta") and weight.dtype in (_F32, torch.bfloat16)
    if not held:
        return f"weight is {weight.dtype} on {weight.device}, not float32 or bf16 on the CPU"
    owners = [p for m in model.modules() if m is not embedding for p in m.parameters(False)]
    if any(p is weight for p in owners):
        return "another layer (a tied head left unpacked) reads its weight"
    return None


def _values(weight: torch.Tensor, raw: RawWeight | None) -> torch.Tensor:
    """The table as float32 ``[vocab, hidden]``: the loaded weight (widened exactly), or
    for a weight on the meta device its file rows de-quantized (KeyError-free: the caller
    holds ``raw`` for a meta weight)."""
    if not weight.is_meta:
        return weight.to(_F32)
    assert raw is not None  # a meta weight always comes with its rows (gguf_load)
    return dequantize_raw(raw)


def _narrow(weights: str, weight: torch.Tensor, raw: RawWeight | None) -> RowEmbedding | None:
    """The RowEmbedding ``weights`` asks for (``weight``: ``[vocab, hidden]``, float32 or
    bf16, on the meta device where ``raw`` holds its values), or None to keep it float32."""
    hidden = weight.shape[1]
    if weights == "fp32":
        return None
    if weight.dtype == torch.bfloat16 and not weight.is_meta:
        return RowEmbedding("bf16", weight, hidden)  # a bf16 checkpoint's table, as loaded
    if weights == "bf16":
        return RowEmbedding("bf16", _values(weight, raw).to(torch.bfloat16), hidden)
    if weights != "auto":
        return None
    if weight.is_meta and raw is not None and raw.format in ROW_FORMATS:
        rows = torch.from_numpy(np.array(raw.rows, dtype=np.uint8))  # owned: not the mapping
        if raw.format == "bf16":
            return RowEmbedding("bf16", rows.view(torch.bfloat16), hidden)
        return RowEmbedding(raw.format, rows, hidden)
    values = _values(weight, raw)
    narrow = exact_bf16(values)
    if narrow is None and raw is not None and rounds(raw.format):
        narrow = values.to(torch.bfloat16)  # a type no lookup here reads: bf16, as a layer
    return None if narrow is None else RowEmbedding("bf16", narrow, hidden)


def rounds(format: str) -> bool:
    """True for a GGML type (lower case) whose rows ``auto`` rounds to bf16 in the table:
    one :class:`RowEmbedding` does not hold, other than f32."""
    return format not in ROW_FORMATS and format != "f32"


def _agrees(narrow: RowEmbedding, weights: str, weight: torch.Tensor,
            raw: RawWeight | None) -> bool:  # fmt: skip
    """True if ``narrow`` holds what it should: a loaded weight's bits (rounded to bf16
    under ``bf16``) over the whole table, or file rows' gguf de-quantization over the first
    and last ``_SPOT_ROWS`` rows (-0.0 and 0.0 told apart)."""
    if weight.is_meta:
        if raw is None or narrow.format not in QUANTIZED:
            return True  # made from gguf's own de-quantization just now
        from gguf.quants import dequantize

        ends = (slice(0, _SPOT_ROWS), slice(max(0, narrow.num_embeddings - _SPOT_ROWS), None))
        for rows in ends:
            got = dequantize_rows(narrow.format, narrow.rows[rows], narrow.embedding_dim)
            want = np.ascontiguousarray(dequantize(raw.rows[rows], ggml_type(raw.format)))
            if not torch.equal(got.view(torch.int32), torch.from_numpy(want).view(torch.int32)):
                return False
        return True
    expected = weight.to(_F32)
    if weights == "bf16":
        expected = expected.to(torch.bfloat16).to(_F32)
    return torch.equal(narrow.table().view(torch.int32), expected.view(torch.int32))


def input_rows(model: torch.nn.Module, rows: Mapping[str, RawWeight]) -> RawWeight | None:
    """The file rows ``rows`` (by module name) holds for ``model``'s input embedding."""
    try:
        embedding = model.get_input_embeddings()  # type: ignore[operator]
    except NotImplementedError:
        return None
    name = next((n for n, m in model.named_modules() if m is embedding), None)
    return None if name is None else rows.get(name)


def install_embedding(model: torch.nn.Module, weights: str, rows: Mapping[str, RawWeight],
                      tied: str | None = None) -> str:  # fmt: skip
    """Replaces ``model``'s input embedding with the :class:`RowEmbedding` ``weights`` (a
    ``--weights`` name) asks for; ``rows``: the file's rows by module name of the layers
    whose weight is on the meta device (:class:`prefixkv.engine.gguf_load.Opened`). Call
    after the linear layers are installed (a tied head must have its own packed copy by
    then). ``tied``: the name of the head whose weight was the embedding's before the
    linear layers were installed (:func:`prefixkv.engine.tied_embedding.tied_head`); where
    that head is packed with the values the table would hold, the embedding reads them out
    of it (:class:`~prefixkv.engine.tied_embedding.HeadEmbedding`) instead of a copy.

    Returns the format the table is held in (``f32`` where it stays: a meta weight then
    still needs :func:`prefixkv.engine.gguf_load.widen`). Mutates ``model`` (its input
    embedding). A narrow table that does not hold the values it should (:func:`_agrees`) is
    never used: logged, kept float32."""
    try:
        embedding = model.get_input_embeddings()  # type: ignore[operator]
    except NotImplementedError:  # transformers' answer for a model it cannot find it in
        log.info("input embedding kept as loaded: the model does not name one")
        return "f32"
    why = _replaceable(model, embedding)
    if why is not None:
        if weights != "fp32":
            log.info("input embedding kept float32: %s", why)
        return "f32"
    name = next(n for n, m in model.named_modules() if m is embedding)
    weight, raw = embedding.weight.detach(), rows.get(name)
    shared = None if tied is None else shared_embedding(model, tied, weights, weight, raw)
    if shared is not None:
        log.info("input embedding: read out of the tied head's %s blocks (%s)", shared.format,
                 tied)  # fmt: skip
        model.set_input_embeddings(shared)  # type: ignore[operator]
        return shared.format
    narrow = _narrow(weights, weight, raw)
    if narrow is None:
        return "f32"
    if not _agrees(narrow, weights, weight, raw):
        log.warning("input embedding as %s differs from the values it holds: kept as fp32",
                    narrow.format)  # fmt: skip
        return "f32"
    model.set_input_embeddings(narrow)  # type: ignore[operator]
    return narrow.format
