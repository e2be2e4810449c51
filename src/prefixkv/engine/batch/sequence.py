"""Sequence: one request's state while the batch runner serves it, and the sink it reports to.

A sequence's tokens are its prompt then every token it generated; ``computed`` of them have
KV in its block table. Each step feeds ``tokens[computed:computed + n]``; once everything
known is fed, the logits of the last fed token give the next token. Preempting a sequence
closes its table (its full blocks stay indexed) and keeps the rest (tokens, sampler state,
text), so it resumes from its cached prefix and continues exactly where it stopped.
"""

from __future__ import annotations

import array
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from prefixkv.cache.protocol import BlockStore
from prefixkv.cache.table import BlockTable
from prefixkv.engine.decoding import Decoding
from prefixkv.engine.request import Completion, Request
from prefixkv.engine.role import Outcome, RequestCancelled, Sink
from prefixkv.tokens import TokenBytes

if TYPE_CHECKING:
    from prefixkv.engine.batch.canary import Canary

__all__ = ["Outcome", "RequestCancelled", "Sequence", "Sink"]


class Caching(Protocol):
    """How a sequence uses the store: open its table, then index what it fills."""

    def open(self, store: BlockStore, seq: Sequence) -> BlockTable:
        """The table to start (or resume) ``seq`` on."""
        ...

    def commit(self, store: BlockStore, seq: Sequence) -> None:
        """Index the full blocks ``seq`` has computed, if this caching indexes."""
        ...

    def started(self, store: BlockStore, seq: Sequence, canary: Canary) -> None:
        """``seq`` was admitted on its table: tell the exactness canary if it should know."""
        ...


class Indexed:
    """A request's caching: starts from the longest cached prefix, indexes every block it
    fills (what every request does)."""

    def open(self, store: BlockStore, seq: Sequence) -> BlockTable:
        return store.open(seq.lookup_bytes(), seq.request.namespace)

    def commit(self, store: BlockStore, seq: Sequence) -> None:
        assert seq.table is not None
        if seq.computed // store.block_size > seq.table.indexed:
            store.commit(seq.table, seq.fed_bytes())

    def started(self, store: BlockStore, seq: Sequence, canary: Canary) -> None:
        assert seq.table is not None
        canary.consider(store, seq.table, seq.lookup_bytes())


class Unindexed:
    """The exactness canary's caching: computes everything into private blocks, which no
    lookup ever finds (see :mod:`.canary`)."""

    def open(self, store: BlockStore, seq: Sequence) -> BlockTable:
        return store.hold(TokenBytes(b""), seq.request.namespace)

    def commit(self, store: BlockStore, seq: Sequence) -> None:
        return None

    def started(self, store: BlockStore, seq: Sequence, canary: Canary) -> None:
        return None  # a check is not checked


INDEXED = Indexed()
UNINDEXED = Unindexed()


@dataclass(eq=False)
class Sequence:
    """A request being served. Owned by the runner thread."""

    request: Request
    sink: Sink
    decoding: Decoding
    arrived: float
    tokens: array.array[int] = field(default_factory=lambda: array.array("I"))
    table: BlockTable | None = None
    computed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = -1  # set at first admission (-1: never admitted)
    held: int = 0
    """Steps in a row that left this prefill out to give others their first token sooner."""
    caching: Caching = INDEXED

    @classmethod
    def create(cls, request: Request, sink: Sink, tokenizer: Any, eos: frozenset[int]) -> Sequence:
        seq = cls(request, sink, Decoding(request, tokenizer, eos), time.perf_counter())
        seq.tokens.frombytes(request.ids)
        seq.prompt_tokens = len(seq.tokens)
        return seq

    @property
    def pending(self) -> int:
        """Known tokens not fed yet (at least 1 while running: the last token)."""
        return len(self.tokens) - self.computed

    def fed_bytes(self) -> TokenBytes:
        """The tokens whose KV the table holds, canonical form (for indexing)."""
        return TokenBytes(self.tokens[: self.computed].tobytes())

    def lookup_bytes(self) -> TokenBytes:
        """What to look up when (re)admitted: every known token but the last, whose logits
        must be computed (so the cached part never covers a token this sequence writes)."""
        return TokenBytes(self.tokens[: len(self.tokens) - 1].tobytes())

    def accept(self, logits: torch.Tensor) -> None:
        """Choose the next token, delivering to the sink (see :meth:`Decoding.accept`); a
        token that does not end the sequence becomes its next known token."""
        self.decoding.accept(logits, self.sink)
        if not self.decoding.done:
            self.tokens.append(self.decoding.generated[-1])

    def completion(self) -> Completion:
        return self.decoding.completion(
            self.prompt_tokens, max(self.cached_tokens, 0), self.arrived
        )
