"""The records of reported log-probabilities: one Candidate per token considered, one
TokenLogprob per generated token, one PromptTokenLogprob per prompt token. No torch here
(the server shapes them into JSON)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One token and its log-probability at one position.

    ``token``: the token's text as the tokenizer decodes it alone (special tokens shown);
    ``raw``: the token's own bytes (for a token that holds part of a UTF-8 character, those
    bytes, while ``token`` shows U+FFFD); ``logprob``: finite (``-inf`` is reported as
    :data:`FLOOR`, which JSON can carry)."""

    token_id: int
    token: str
    raw: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token (``chosen``) and the ``top`` likeliest tokens at its position,
    likeliest first (as many as the request asked for)."""

    chosen: Candidate
    top: tuple[Candidate, ...]


@dataclass(frozen=True)
class PromptTokenLogprob:
    """A prompt token (``chosen``), its ``rank`` (how many tokens are at least as likely)
    and the ``top`` likeliest tokens at its position, likeliest first
    (:mod:`prefixkv.engine.prompt_logprobs`)."""

    chosen: Candidate
    rank: int
    top: tuple[Candidate, ...]


FLOOR = -9999.0
"""The log-probability reported for a token that could not be chosen (``-inf``)."""
