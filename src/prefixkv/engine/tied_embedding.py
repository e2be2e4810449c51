"""The token embedding of a model whose head is tied to it, read out of the head's packed
weight: the table held once, not twice.

A tied head (``tie_word_embeddings``: SmolLM2, Llama-3.2-1B/3B) has the embedding's table as
its weight. The native linear kernel packs the head into column blocks
(:mod:`prefixkv.kernels.formats`); the embedding would then hold the same values a second
time (:mod:`prefixkv.engine.embedding`: the file's rows, 106 MB of Q8_0 for a 1B model's
128k x 2048 table ... or 25 MB for SmolLM2's). :class:`HeadEmbedding` instead gathers the
rows a lookup asks for out of the head's column blocks
(:func:`prefixkv.kernels.column_rows.rows_of`) and de-quantizes them as the head's kernel
does. The head is packed in the narrowest exact format ``--weights`` allows, and the
embedding would hold the same values in the same precision (both as the file stores them,
both rounded to bf16, or both float32), so the lookup gives the bits the embedding would
have: :func:`shared_embedding` checks rows at both ends and through the table against the
values the embedding holds before the head's weight is used.
"""

from __future__ import annotations

import torch

from prefixkv.engine.gguf_blocks import RawWeight
from prefixkv.engine.gguf_load import dequantize_raw
from prefixkv.engine.native_linear import NativeLinearLayer
from prefixkv.kernels.column_rows import rows_of

__all__ = ["HeadEmbedding", "shared_embedding", "tied_head"]

_SPOT_ROWS = 64  # rows checked at each end of the table, and spread through it
_F32, _BF16 = torch.float32, torch.bfloat16


class HeadEmbedding(torch.nn.Module):
    """A lookup in the weight of ``head`` (a packed layer whose rows are the table): float32
    ``[*ids.shape, embedding_dim]``. IndexError for an id outside the vocabulary (as
    ``nn.Embedding``). Holds no tensor of its own: the head's ``packed`` buffer is the
    table (and what the model fingerprint hashes, with the head's format)."""

    def __init__(self, head: NativeLinearLayer) -> None:
        super().__init__()
        self._head = (head,)  # a tuple: not a submodule (the head stays named once, as the head)
        self.format = head.format
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).to(torch.int64)
        if not flat.numel():
            return torch.empty(*ids.shape, self.embedding_dim)
        if int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings:
            raise IndexError(f"ids: each must be in 0..{self.num_embeddings - 1}")
        # A row's bytes are spread over its column block (a cache line per k step holds 64
        # columns' values), so each distinct id is gathered once, in block order.
        unique, inverse = torch.unique(flat, return_inverse=True)
        values = rows_of(self._head[0].weight, unique).index_select(0, inverse)
        return values.view(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, format={self.format} (the head's)"


def tied_head(model: torch.nn.Module) -> str | None:
    """The name of the ``nn.Linear`` whose weight is ``model``'s input embedding's weight
    (a tied head), or None. Call before the linear layers are swapped."""
    try:
        embedding = model.get_input_embeddings()  # type: ignore[operator]
    except NotImplementedError:
        return None
    weight = getattr(embedding, "weight", None)
    if weight is None:
        return None
    return next(
        (
            n
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m.weight is weight
        ),
        None,
    )


def shared_embedding(model: torch.nn.Module, head_name: str, weights: str, weight: torch.Tensor,
                     raw: RawWeight | None) -> HeadEmbedding | None:  # fmt: skip
    """A :class:`HeadEmbedding` over the layer ``head_name`` (tied to the embedding whose
    weight is ``weight``, on the meta device where ``raw`` holds its rows) if that layer is
    packed for the native kernel and its rows are the values the embedding would hold
    under ``weights`` (a ``--weights`` name), else None. Mutates nothing."""
    head = model.get_submodule(head_name)
    if not isinstance(head, NativeLinearLayer) or head.out_features != weight.shape[0]:
        return None
    if head.in_features != weight.shape[1] or (weight.is_meta and raw is None):
        return None
    shared = HeadEmbedding(head)
    ids = _spot_ids(weight.shape[0])
    with torch.inference_mode():
        got = shared(ids)
    want = _held(weights, weight, raw, ids)
    return shared if torch.equal(got.view(torch.int32), want.view(torch.int32)) else None


def _spot_ids(vocab: int) -> torch.Tensor:
    """Rows at both ends of a table of ``vocab`` rows (its first and last column blocks),
    and spread evenly through it."""
    ends = torch.cat((torch.arange(min(vocab, _SPOT_ROWS)),
                      torch.arange(max(0, vocab - _SPOT_ROWS), vocab)))  # fmt: skip
    spread = torch.linspace(0, vocab - 1, _SPOT_ROWS).to(torch.int64)
    return torch.cat((ends, spread))


def _held(weights: str, weight: torch.Tensor, raw: RawWeight | None,
          ids: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Rows ``ids`` of the table :mod:`prefixkv.engine.embedding` would hold under
    ``weights``, as float32: the loaded values (or the file rows' gguf de-quantization),
    rounded to bf16 under ``bf16`` and under ``auto`` where the file's type is one no
    lookup reads (:func:`prefixkv.engine.embedding.rounds`)."""
    from prefixkv.engine.embedding import rounds

    if weight.is_meta:
        assert raw is not None  # shared_embedding returns before for a meta weight without
        picked = RawWeight(raw.format, raw.rows[ids.numpy()], raw.in_features)
        values = dequantize_raw(picked)
    else:
        values = weight.detach()[ids].to(_F32)
    narrowed = weights == "bf16" or (weights == "auto" and raw is not None and rounds(raw.format))
    return values.to(_BF16).to(_F32) if narrowed else values
