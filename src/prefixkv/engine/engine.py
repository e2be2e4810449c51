"""Engine: generation with a Hugging Face causal LM through a prefix KV cache.

Per request: look up the longest cached prefix, rebuild the model's KV cache from it, prefill
only the rest (at least the last prompt token, whose logits start decoding), decode, store
the full blocks of prompt + generated tokens, and release the lease whatever happens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache

from prefixkv.cache.layout import KVLayout
from prefixkv.cache.lease import Lease
from prefixkv.cache.paged import DEFAULT_CAPACITY_BYTES, PrefixKVCache
from prefixkv.cache.protocol import PrefixCache
from prefixkv.engine.detok import TextStream
from prefixkv.engine.kvbridge import layout_of, new_cache
from prefixkv.engine.loader import load_model
from prefixkv.engine.prompts import Prompt, prompt_field, prompt_ids
from prefixkv.engine.sampling import InvalidRequestError, Sampler, SamplingParams
from prefixkv.engine.workspace import Workspace, WorkspacePool
from prefixkv.index.policy import EvictionPolicy


@dataclass(frozen=True)
class Completion:
    """The outcome of one request. Times are seconds from the call."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    cached_tokens: int
    """Prompt tokens whose KV came from the cache (never all: the last one is recomputed)."""
    finish_reason: str
    """``"stop"`` (end-of-sequence token or a stop string) or ``"length"`` (max_tokens)."""
    ttft: float
    total_time: float

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class NextTokenLogits(NamedTuple):
    logits: torch.Tensor
    """``[vocab]`` float logits for the token after the prompt."""
    cached_tokens: int


class Engine:
    """A model, its tokenizer and a prefix cache. Thread-safe: model calls are serialized,
    so concurrent requests interleave token by token."""

    def __init__(
        self, model: Any, tokenizer: Any, cache: PrefixCache, *, name: str = "model"
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.name = name
        config = model.config
        new_cache(config)  # fail fast on models whose KV is not plain full attention
        self.context_length = int(getattr(config, "max_position_embeddings", 2048))
        self.vocab_size = int(config.vocab_size)
        self.device = next(model.parameters()).device
        self._model_lock = threading.Lock()
        self._workspaces = WorkspacePool(
            layout_of(config, next(model.parameters()).dtype), self.device
        )
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)

    @classmethod
    def from_pretrained(
        cls,
        model: str = "smollm2",
        *,
        cache_bytes: int = DEFAULT_CAPACITY_BYTES,
        block_size: int = 16,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: Path | None = None,
        policy: EvictionPolicy | None = None,
    ) -> Engine:
        """Load ``model`` offline (see :func:`prefixkv.engine.loader.load_model`) with a
        PrefixKVCache of ``cache_bytes``; use :meth:`with_cache` for another cache."""
        loaded = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir)
        layout = layout_of(loaded.model.config, next(loaded.model.parameters()).dtype)
        cache = PrefixKVCache(layout, block_size, cache_bytes, device, policy=policy)
        return cls(loaded.model, loaded.tokenizer, cache, name=loaded.name)

    @property
    def layout(self) -> KVLayout:
        return layout_of(self.model.config, next(self.model.parameters()).dtype)

    def with_cache(self, cache: PrefixCache) -> Engine:
        """The same model and tokenizer over another cache (e.g. a NullCache baseline)."""
        return Engine(self.model, self.tokenizer, cache, name=self.name)

    # --- requests ------------------------------------------------------------------------

    def generate(
        self, prompt: Prompt, *, namespace: Hashable = None, **sampling: Any
    ) -> Completion:
        """Run one request to completion. ``sampling``: max_tokens, temperature, top_p, seed,
        stop (see SamplingParams.create). Raises InvalidRequestError before any work on bad
        input, leaving the cache untouched."""
        for item in self.stream(prompt, namespace=namespace, **sampling):
            if isinstance(item, Completion):
                return item
        raise AssertionError("stream ended without a Completion")  # pragma: no cover

    def stream(
        self, prompt: Prompt, *, namespace: Hashable = None, **sampling: Any
    ) -> Generator[str | Completion, None, None]:
        """Validate now, then return a generator of text deltas ending with the Completion.
        Closing it early (``close()``) stops generation and releases the cached blocks."""
        start = time.perf_counter()
        ids, params = self.prepare(prompt, **sampling)
        return self._run(ids, params, namespace, start)

    def prepare(self, prompt: Prompt, **sampling: Any) -> tuple[list[int], SamplingParams]:
        """Tokenize and validate a request without running it."""
        ids = prompt_ids(prompt, self.tokenizer, self.vocab_size)
        return ids, self.validate(ids, prompt_field(prompt), **sampling)

    def validate(self, ids: Sequence[int], field: str, **sampling: Any) -> SamplingParams:
        """Check sampling fields and that ``ids`` plus max_tokens fit the context; raise
        InvalidRequestError naming the field (``field`` for the prompt itself)."""
        params = SamplingParams.create(**sampling)
        if len(ids) >= self.context_length:
            raise InvalidRequestError(
                f"{field} has {len(ids)} tokens; the model's context is {self.context_length}",
                field,
                "context_length_exceeded",
            )
        if len(ids) + params.max_tokens > self.context_length:
            raise InvalidRequestError(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"model's context of {self.context_length} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        return params

    def _run(
        self, ids: list[int], params: SamplingParams, namespace: Hashable, start: float
    ) -> Generator[str | Completion, None, None]:
        workspace = self._workspaces.acquire(len(ids) + params.max_tokens)
        lease: Lease | None = None
        try:
            lease = self.cache.lookup(ids, namespace)
            kv, reuse = self._restore(lease, workspace, len(ids))
            logits = self.forward(ids[reuse:], reuse, kv)
            sampler, text = Sampler(params), TextStream(self.tokenizer, params.stop)
            generated: list[int] = []
            ttft, finish = 0.0, "length"
            while True:
                token = sampler(logits)
                if not generated:
                    ttft = time.perf_counter() - start
                generated.append(token)
                if token in self.eos_ids:
                    finish = "stop"
                    break
                delta = text.push(token)
                if delta:
                    yield delta
                if text.stopped:
                    finish = "stop"
                    break
                if len(generated) == params.max_tokens:
                    break
                logits = self.forward([token], len(ids) + len(generated) - 1, kv)
            tail = text.finish()
            if tail:
                yield tail
            # The KV covers every token fed to the model: the prompt and all generated tokens
            # but the last one.
            fed = len(ids) + len(generated) - 1
            self.cache.store((ids + generated)[:fed], workspace.kv(fed), namespace)
            yield Completion(
                text=text.text,
                token_ids=tuple(generated),
                prompt_tokens=len(ids),
                cached_tokens=reuse,
                finish_reason=finish,
                ttft=ttft,
                total_time=time.perf_counter() - start,
            )
        finally:
            if lease is not None:
                lease.release()
            self._workspaces.release(workspace)

    def _restore(
        self, lease: Lease, workspace: Workspace, prompt_len: int
    ) -> tuple[DynamicCache, int]:
        """Copy the leased prefix into ``workspace``; return the model cache over it and how
        many prompt tokens it holds (never all: the last one is recomputed for its logits)."""
        lease.copy_to(workspace.data)
        reuse = min(lease.num_tokens, prompt_len - 1)
        return workspace.as_cache(self.model.config, reuse), reuse

    def forward(self, ids: Sequence[int], position: int, kv: DynamicCache) -> torch.Tensor:
        """Feed ``ids`` at positions ``position...`` on top of ``kv`` (a cache holding
        ``position`` tokens, which grows by ``len(ids)``); return the last ``[vocab]`` logits.
        The one place the model runs; model calls are serialized across threads."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        positions = torch.arange(position, position + len(ids), device=self.device)[None]
        with self._model_lock, torch.inference_mode():
            out = self.model(
                input_ids=input_ids,
                position_ids=positions,
                past_key_values=kv,
                use_cache=True,
                logits_to_keep=1,
            )
        logits: torch.Tensor = out.logits[0, -1]
        return logits.float()

    def next_token_logits(self, prompt: Prompt, *, namespace: Hashable = None) -> NextTokenLogits:
        """Logits for the token after ``prompt``, prefilling only what the cache lacks.
        Stores nothing; for scoring and for checking exactness against a recomputation."""
        ids = prompt_ids(prompt, self.tokenizer, self.vocab_size)
        workspace = self._workspaces.acquire(len(ids))
        try:
            with self.cache.lookup(ids, namespace) as lease:
                kv, reuse = self._restore(lease, workspace, len(ids))
            return NextTokenLogits(self.forward(ids[reuse:], reuse, kv), reuse)
        finally:
            self._workspaces.release(workspace)
