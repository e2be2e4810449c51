"""A model-free engine for in-process server tests: the real Intake (tokenizing, validation)
over a character tokenizer, a real PrefixKVCache over tiny fake KV, and text that depends on
the prompt, so a reply delivered to the wrong request shows."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from prefixkv.cache import KVLayout, PrefixKVCache
from prefixkv.engine.batch.records import StepReport
from prefixkv.engine.intake import Intake
from prefixkv.engine.logprob_records import Candidate, PromptTokenLogprob, TokenLogprob
from prefixkv.engine.prompts import Prompt
from prefixkv.engine.request import Completion, Request, SamplingParams
from prefixkv.engine.role import Sink
from prefixkv.engine.serial import SerialRunner
from prefixkv.tokens import TokenBytes, token_count

SPECIALS = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
VOCAB = 256
CONTEXT = 512
BLOCK = 4
LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=2)


@dataclass(frozen=True)
class _Added:
    content: str
    special: bool = True


class CharTokenizer:
    """One id per character (control markers as one id each unless split); ChatML template.
    ``delay``: seconds each call takes (a stand-in for tokenizing a huge prompt)."""

    chat_template = "chatml"
    unk_token_id = 0

    def __init__(self) -> None:
        self.added_tokens_decoder = {i: _Added(s) for s, i in SPECIALS.items()}
        self.delay = 0.0

    def __call__(
        self,
        text: str | list[str],
        add_special_tokens: bool = True,
        split_special_tokens: bool = False,
    ) -> dict[str, Any]:
        time.sleep(self.delay)
        if isinstance(text, list):
            return {"input_ids": [self._encode(t, split_special_tokens) for t in text]}
        return {"input_ids": self._encode(text, split_special_tokens)}

    def _encode(self, text: str, split: bool) -> list[int]:
        ids, pos = [], 0
        while pos < len(text):
            marker = next((s for s in SPECIALS if not split and text.startswith(s, pos)), None)
            if marker is not None:
                ids.append(SPECIALS[marker])
                pos += len(marker)
            else:
                ids.append(3 + ord(text[pos]) % (VOCAB - 3))
                pos += 1
        return ids

    def decode(
        self, ids: list[int], skip_special_tokens: bool, clean_up_tokenization_spaces: bool
    ) -> str:
        """The inverse of encoding for characters below code point 253 (and the markers)."""
        names = {i: s for s, i in SPECIALS.items()}
        return "".join(names.get(i) or chr(i - 3) for i in ids)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool, tokenize: bool
    ) -> str:
        assert not tokenize
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class FakeEngine:
    """Implements EngineRole. ``gate``: runs wait for it (set by default); ``entered`` is set
    when a run starts; ``delay``: seconds per generated token."""

    name = "fake"
    context_length = CONTEXT
    layout = LAYOUT
    device = torch.device("cpu")

    def __init__(
        self, capacity_blocks: int = 256, delay: float = 0.0, tenant_share: float | None = None
    ) -> None:
        self.cache = PrefixKVCache(
            LAYOUT, BLOCK, LAYOUT.block_bytes(BLOCK) * capacity_blocks, tenant_share=tenant_share
        )
        self.tokenizer = CharTokenizer()
        self.intake = Intake(self.tokenizer, VOCAB, CONTEXT)
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.runs = 0

    def request(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        namespace: Hashable,
        default_max_tokens: int,
    ) -> Request:
        return self.intake.request(
            prompt, params, namespace=namespace, default_max_tokens=default_max_tokens
        )

    def tokenize(self, prompt: Prompt, *, add_generation_prompt: bool = True) -> TokenBytes:
        """See :meth:`Intake.tokens`."""
        return self.intake.tokens(prompt, add_generation_prompt=add_generation_prompt)

    def detokenize(self, ids: Sequence[int]) -> str:
        """See :meth:`Intake.text`."""
        return self.intake.text(ids)

    def prompt_logprobs(self, ids: TokenBytes, top: int) -> tuple[PromptTokenLogprob, ...]:
        """The fake model's distribution is uniform: every token has rank VOCAB."""
        flat = -math.log(VOCAB)
        tokens = np.frombuffer(ids, dtype=np.uint32).tolist()[1:]
        alternatives = tuple(Candidate(t, chr(t), bytes([t]), flat) for t in range(top))
        return tuple(
            PromptTokenLogprob(Candidate(t, chr(t), bytes([t % 256]), flat), VOCAB, alternatives)
            for t in tokens
        )

    def runner(self, on_step: Callable[[StepReport], None]) -> FakeRunner:
        """A serial runner over this engine (what the server tests serve with), reporting
        its steps to ``on_step``."""
        return FakeRunner(self, on_step)


class FakeRunner(SerialRunner):
    """The serial runner (queue, thread, cancellation) with the fake engine's generation,
    over the same BlockStore calls."""

    def __init__(self, engine: FakeEngine, on_step: Callable[[StepReport], None]) -> None:
        super().__init__(cast(Any, engine), on_step)
        self.fake = engine

    def steps(self, request: Request, sink: Sink, start: float) -> Generator[None, None, None]:
        engine = self.fake
        engine.runs += 1
        engine.entered.set()
        engine.gate.wait(60)
        count = token_count(request.ids)
        seed = int(np.frombuffer(request.ids, dtype=np.uint32).sum())
        table = engine.cache.open(request.ids, request.namespace)
        try:
            reuse = min(table.cached_tokens, count - 1)
            text = "".join(chr(ord("a") + (seed + i) % 26) for i in range(request.max_tokens))
            cuts = [text.find(s) for s in request.params.stop if s in text]
            finish = "stop" if cuts else "length"
            text = text[: min(cuts)] if cuts else text
            asked = request.params.logprobs is not None
            for char in text:
                time.sleep(engine.delay)
                if asked:  # one "token" per character, each a uniform choice of 26
                    sink.deliver(_logprob(char))
                sink.deliver(char)
                yield
            # The prompt's full blocks, as the serial runner caches them (their KV unwritten).
            engine.cache.reserve(table, count)
            engine.cache.commit(table, request.ids)
        finally:
            engine.cache.close(table)
        elapsed = time.perf_counter() - start
        logprobs = tuple(_logprob(char) for char in text) if asked else ()
        ids = tuple(range(len(text)))
        sink.deliver(Completion(text, ids, count, reuse, finish, elapsed, elapsed, logprobs))


def _logprob(char: str) -> TokenLogprob:
    return TokenLogprob(Candidate(ord(char), char, char.encode(), -math.log(26)), ())
