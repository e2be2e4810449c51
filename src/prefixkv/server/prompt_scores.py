"""vLLM's ``prompt_logprobs`` request field and its answer (chat and completions): for each
prompt token, null for the first, then ``{token_id: {"logprob", "rank", "decoded_token"}}``
holding the prompt token itself first and the ``prompt_logprobs`` likeliest tokens (ranks
1..k), as vLLM writes it: on each choice of a completion, at the top of a chat completion.
What they cost: :mod:`prefixkv.engine.prompt_logprobs`.

Refused with a 400 naming ``prompt_logprobs``: not an integer in ``[0, MAX_LOGPROBS]``
(vLLM's default bound; its ``-1``, the whole vocabulary, is beyond it), and with
``stream`` (as vLLM refuses it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefixkv.engine.logprob_records import Candidate, PromptTokenLogprob
from prefixkv.engine.request import MAX_LOGPROBS, wrong_type
from prefixkv.server.errors import APIError

NAME = "prompt_logprobs"


def read_prompt_logprobs(body: Mapping[str, Any], stream: bool) -> int | None:
    """How many alternatives per prompt token the body asks for; None for no prompt
    logprobs. Raises APIError naming the field."""
    value = body.get(NAME)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(NAME, "an integer", value)
    if not 0 <= value <= MAX_LOGPROBS:
        raise APIError.invalid(f"{NAME} must be in [0, {MAX_LOGPROBS}], got {value}", NAME)
    if stream:
        raise APIError.invalid(f"{NAME} cannot be streamed", NAME)
    return value


def attached(
    api: str, body: dict[str, Any], records: Sequence[PromptTokenLogprob]
) -> dict[str, Any]:
    """``body`` (a whole answer of ``api``, "chat" or "completions") with the prompt's
    logprobs where vLLM puts them; a new body."""
    shaped = [None, *(_position(record) for record in records)]
    if api == "chat":
        return {**body, NAME: shaped}
    return {**body, "choices": [{**c, NAME: shaped} for c in body["choices"]]}


def _position(record: PromptTokenLogprob) -> dict[str, Any]:
    out = {str(record.chosen.token_id): _entry(record.chosen, record.rank)}
    for rank, candidate in enumerate(record.top, start=1):
        out.setdefault(str(candidate.token_id), _entry(candidate, rank))
    return out


def _entry(candidate: Candidate, rank: int) -> dict[str, Any]:
    return {"logprob": candidate.logprob, "rank": rank, "decoded_token": candidate.token}
