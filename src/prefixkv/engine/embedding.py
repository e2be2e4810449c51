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

from prefixkv.engine.gguf_blocks import RawWeight
from prefixkv.kernels.formats import QUANTIZED, dequantize, exact_bf16, gguf_planes

__all__ = ["ROW_FORMATS", "RowEmbedding", "dequantize_rows", "install_embedding"]

log = logging.getLogger("prefixkv.engine")

ROW_FORMATS = ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "bf16")
_VERIFY_ROWS = 4096  # rows de-quantized at a time when checking a whole table


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
    if weight.dtype != torch.float32 or weight.device.type != "cpu":
        return f"weight is {weight.dtype} on {weight.device}, not float32 on the CPU"
    owners = [p for m in model.modules() if m is not embedding for p in m.parameters(False)]
    if any(p is weight for p in owners):
        return "another layer (a tied head left unpacked) reads its weight"
    return None


def _narrow(weights: str, weight: torch.Tensor, raw: RawWeight | None) -> RowEmbedding | None:
    """The RowEmbedding ``weights`` asks for (``weight``: float32 ``[vocab, hidden]``)."""
    hidden = weight.shape[1]
    if weights == "bf16":
        return RowEmbedding("bf16", weight.detach().to(torch.bfloat16), hidden)
    if weights != "auto":
        return None
    if raw is not None and raw.format in QUANTIZED:
        rows = torch.from_numpy(np.array(raw.rows, dtype=np.uint8))  # owned: not the mapping
        return RowEmbedding(raw.format, rows, hidden)
    narrow = exact_bf16(weight)
    return None if narrow is None else RowEmbedding("bf16", narrow, hidden)


def install_embedding(model: torch.nn.Module, weights: str, raw: Mapping[str, RawWeight]) -> str:
    """Replaces ``model``'s input embedding with the :class:`RowEmbedding` ``weights`` (a
    ``--weights`` name) asks for; ``raw``: the file's rows by module name (as
    :func:`prefixkv.engine.gguf_blocks.raw_weights` returns them). Call after the linear
    layers are installed (a tied head must have its own packed copy by then).

    Returns the format the table is held in (``f32`` where it stays as loaded). Mutates
    ``model`` (its input embedding). A narrow table whose values differ from the loaded
    weight's bits (under ``auto``) is never used: logged, kept float32."""
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
    weight = embedding.weight.detach()
    narrow = _narrow(weights, weight, raw.get(name))
    if narrow is None:
        return "f32"
    # bf16 rounds by request; every other format must give the loaded bits (-0.0 != 0.0).
    expected = weight.to(torch.bfloat16).to(torch.float32) if weights == "bf16" else weight
    if not torch.equal(narrow.table().view(torch.int32), expected.view(torch.int32)):
        log.warning("input embedding as %s differs from the loaded weight: kept as fp32",
                    narrow.format)  # fmt: skip
        return "f32"
    model.set_input_embeddings(narrow)  # type: ignore[operator]
    return narrow.format
