"""Where ``prefixkv serve``'s answers may differ in shape from the reference server's (vLLM's
CPU build) in the conformance suite (:mod:`prefixkv.bench.conformance`), and why: fields
that are vLLM's own extensions, optional OpenAI fields one side leaves out, and values vLLM
names differently from OpenAI. Each entry must still be seen (the suite checks), so a stale
one cannot hide a future difference.
"""

from __future__ import annotations

import fnmatch
from typing import NamedTuple

from prefixkv.bench.conformance_shapes import Difference


class Known(NamedTuple):
    """A difference the suite accepts: where (fnmatch patterns over ``case:path``), and why
    prefixkv's answer differs from the reference there."""

    where: tuple[str, ...]
    why: str


KNOWN_DIFFERENCES: tuple[Known, ...] = (
    Known(
        (
            "*:*stop_reason",
            "*:*token_ids",
            "*:*routed_experts",
            "*:*prompt_logprobs",
            "*:*prompt_token_ids",
            "*:*prompt_text",
            "*:*kv_transfer_params",
            "*:*ec_transfer_params",
            "*:metrics",
            "*:*message.reasoning",
            "*:*usage.prompt_tokens_details.created_cache_tokens",
            "*:*usage.prompt_tokens_details.multimodal_tokens",
        ),
        "vLLM's own extensions (null unless asked for, or vLLM's cache accounting); not "
        "OpenAI's API: prefixkv leaves them out (prompt_logprobs too, unless asked for, "
        "which no case does)",
    ),
    Known(
        (
            "*:*message.refusal",
            "*:*message.annotations",
            "*:*message.audio",
            "*:*message.function_call",
            "*:*service_tier",
            "*:*usage.completion_tokens_details",
        ),
        "optional in OpenAI's schema and always null here; vLLM sends them as null, prefixkv "
        "leaves them out (the openai client reads both as None)",
    ),
    Known(
        ("*:*system_fingerprint",),
        "optional in OpenAI's schema; prefixkv has no backend fingerprint to report",
    ),
    Known(
        ("error-*:body.error.type", "error-*:body.error.code", "error-*:body.error.param"),
        "prefixkv's error object is OpenAI's (type invalid_request_error, param naming the "
        "field, code null or a string); vLLM's names its exception class in type, puts the "
        "HTTP status in code and leaves param null",
    ),
    Known(
        ("*:stream.usage", "*:stream.usage.|"),
        "prefixkv's chunks carry usage: null until the usage chunk, as OpenAI documents "
        '("all other chunks will also include a usage field, but with a null value"); '
        "vLLM leaves the field out",
    ),
    Known(
        ("*:stream.choices[].delta.content",),
        'vLLM\'s every delta carries content ("" in the first and last, null beside a '
        "tool call); prefixkv's first delta is the role alone and its last is empty, as "
        "OpenAI's are",
    ),
    Known(
        ("*:*logprobs.refusal",),
        "OpenAI's chat logprobs object has refusal beside content (null here), as "
        "prefixkv's does; vLLM's has content alone",
    ),
    Known(
        ("chat-tool-named:choices[].message.content",),
        "a reply that is only calls has content null in prefixkv (as in OpenAI's answers), "
        '"" in vLLM',
    ),
    Known(
        ("chat-tool-*-stream:stream.choices[].delta.tool_calls[].function.arguments",),
        'prefixkv\'s first delta of a call carries arguments "" beside the name (as '
        "OpenAI's does); vLLM's carries the name alone",
    ),
)


def unexplained(case: str, found: list[Difference]) -> list[Difference]:
    """The differences of ``case`` that no entry of ``KNOWN_DIFFERENCES`` covers."""
    return [d for d in found if explained(case, d) is None]


def explained(case: str, difference: Difference) -> Known | None:
    """The entry of ``KNOWN_DIFFERENCES`` covering ``difference`` in ``case``, or None."""
    where = f"{case}:{difference.path}"
    return next((k for k in KNOWN_DIFFERENCES if any(_match(where, p) for p in k.where)), None)


def _match(where: str, pattern: str) -> bool:
    """fnmatch, with a path's ``[]`` (list items) taken literally, not as a set."""
    return fnmatch.fnmatchcase(where, pattern.replace("[]", "[[][]]"))
