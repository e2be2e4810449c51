"""Intake: a prompt and its sampling settings, tokenized and validated once into a Request.

Everything a model-free check can refuse is refused here, naming the field, before any work
on the cache: an empty or malformed prompt, ids outside the vocabulary, bad roles or content,
a prompt or prompt + max_tokens past the context. Needs a tokenizer, not a model (so a
server's tests can run it over a fake tokenizer).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any

from prefixkv.engine.grammar import grammars_of
from prefixkv.engine.prompts import (
    Prompt,
    chars_per_token_bound,
    prompt_chars,
    prompt_field,
    prompt_ids,
)
from prefixkv.engine.request import (
    InvalidRequestError,
    Request,
    SamplingParams,
    short_repr,
    wrong_type,
)
from prefixkv.tokens import TokenBytes, token_count

DEFAULT_MAX_TOKENS = 128
"""Tokens generated when a request sets no max_tokens (as far as the context allows)."""


class Intake:
    """Builds Requests for one tokenizer and context. Thread-safe if the tokenizer is."""

    def __init__(self, tokenizer: Any, vocab_size: int, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.context_length = context_length
        # An upper bound on characters per token, when the tokenizer guarantees one: lets
        # request() refuse a hopelessly long text before spending seconds tokenizing it.
        self._chars_per_token = chars_per_token_bound(tokenizer)

    def request(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        namespace: Hashable = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> Request:
        """The validated Request; its ids converted once to the cache's form.

        ``params.max_tokens`` None becomes ``default_max_tokens``, as far as the context
        allows. Raises InvalidRequestError naming the field. A text prompt with more
        characters than the context could hold (by the tokenizer's bound) is refused before
        tokenizing. O(prompt).
        """
        self._check_ids(params)
        if params.grammar is not None:  # compiled (and cached) here, off the step loop
            grammars_of(self.tokenizer).compile(params.grammar)
        field = prompt_field(prompt)
        bound = self._chars_per_token
        if bound is not None and prompt_chars(prompt) > bound * self.context_length:
            raise InvalidRequestError(
                f"{field} has more than {self.context_length} tokens, the model's context",
                field,
                "context_length_exceeded",
            )
        ids = prompt_ids(prompt, self.tokenizer, self.vocab_size)
        count = token_count(ids)
        if count >= self.context_length:
            raise InvalidRequestError(
                f"{field} has {count} tokens; the model's context is {self.context_length}",
                field,
                "context_length_exceeded",
            )
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = min(default_max_tokens, self.context_length - count)
        elif count + max_tokens > self.context_length:
            raise InvalidRequestError(
                f"prompt ({count} tokens) + max_tokens ({short_repr(max_tokens)}) exceeds the "
                f"model's context of {self.context_length} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        return Request(ids, replace(params, max_tokens=max_tokens), namespace)

    def tokens(self, prompt: Prompt, *, add_generation_prompt: bool = True) -> TokenBytes:
        """``prompt``'s ids as a request would carry them (vLLM's ``/tokenize``); the
        context is not checked. Raises InvalidRequestError naming the field. O(prompt)."""
        return prompt_ids(
            prompt, self.tokenizer, self.vocab_size, add_generation_prompt=add_generation_prompt
        )

    def text(self, ids: Sequence[int]) -> str:
        """The text of token ids, special tokens shown (vLLM's ``/detokenize``). Raises
        InvalidRequestError (param ``tokens``) for a value that is no id of the
        vocabulary."""
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, int):
                raise wrong_type("tokens", "a list of token ids", token)
            if not 0 <= token < self.vocab_size:
                raise InvalidRequestError(
                    f"tokens: {short_repr(token)} is outside the vocabulary (size "
                    f"{self.vocab_size})",
                    "tokens",
                )
        return str(
            self.tokenizer.decode(
                list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    def _check_ids(self, params: SamplingParams) -> None:
        """The token ids ``logit_bias`` and ``stop_token_ids`` name are in the vocabulary."""
        for name, ids in (
            ("logit_bias", [t for t, _ in params.logit_bias]),
            ("stop_token_ids", params.stop_token_ids),
        ):
            outside = [t for t in ids if t >= self.vocab_size]
            if outside:
                raise InvalidRequestError(
                    f"{name}: token id {outside[0]} is outside the vocabulary "
                    f"(size {self.vocab_size})",
                    name,
                )
