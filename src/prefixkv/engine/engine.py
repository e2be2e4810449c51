"""Engine: generation with a Hugging Face causal LM through a prefix KV cache.

Per request: look up the longest cached prefix, rebuild the model's KV cache from it, prefill
only the rest (at least the last prompt token, whose logits start decoding), decode, store
the full blocks of prompt + generated tokens, and release the lease whatever happens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Hashable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import DynamicCache

from prefixkv.cache.layout import KVLayout
from prefixkv.cache.lease import Lease
from prefixkv.cache.paged import DEFAULT_CAPACITY_BYTES, PrefixKVCache
from prefixkv.cache.protocol import PrefixCache
from prefixkv.engine.decoding import Decoding
from prefixkv.engine.intake import DEFAULT_MAX_TOKENS, Intake
from prefixkv.engine.kvbridge import layout_of, new_cache
from prefixkv.engine.linear import linear_kernel as choose_kernel
from prefixkv.engine.loader import load_model
from prefixkv.engine.mapped import copy_mapped_weights
from prefixkv.engine.prompts import Prompt, prompt_ids
from prefixkv.engine.request import Completion, Request, SamplingParams
from prefixkv.engine.workspace import Workspace, WorkspacePool
from prefixkv.heap import release_free_heap
from prefixkv.index.policy import EvictionPolicy
from prefixkv.models.family import text_config
from prefixkv.tokens import TokenBytes, as_token_bytes, token_count

__all__ = ["DEFAULT_MAX_TOKENS", "Completion", "Engine", "NextTokenLogits", "Request"]

DEFAULT_PARAMS = SamplingParams()
log = logging.getLogger("prefixkv.engine")


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
        new_cache(config)  # fail fast on layer kinds prefixkv does not serve
        text = text_config(config)  # a multimodal model's text decoder
        self.context_length = int(getattr(text, "max_position_embeddings", 2048))
        self.vocab_size = int(text.vocab_size)
        self.device = next(model.parameters()).device
        self.model_lock = threading.Lock()
        self._workspaces = WorkspacePool(
            layout_of(config, next(model.parameters()).dtype), self.device
        )
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)
        self.intake = Intake(tokenizer, self.vocab_size, self.context_length)

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
        tenant_share: float | None = None,
        linear_kernel: str = "auto",
    ) -> Engine:
        """Load ``model`` offline (see :func:`prefixkv.engine.loader.load_model`) with a
        PrefixKVCache of ``cache_bytes`` (``policy`` and ``tenant_share`` as there); use
        :meth:`with_cache` for another cache. ``linear_kernel`` picks what runs the linear
        layers (see :mod:`prefixkv.engine.linear`; ValueError for an unknown name)."""
        loaded = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir)
        kernel = choose_kernel(linear_kernel, loaded.model)
        swapped = kernel.install(loaded.model)
        log.info("linear layers: %s (%d swapped)", kernel.name, swapped)
        # The weights left unpacked would keep the whole checkpoint file mapped and resident
        # (see prefixkv.engine.mapped); packing left the plain copies freed on the C heap
        # (see prefixkv.heap). benchmarks/load_memory.py measures both.
        copy_mapped_weights(loaded.model)
        release_free_heap()
        layout = layout_of(loaded.model.config, next(loaded.model.parameters()).dtype)
        cache = PrefixKVCache(
            layout, block_size, cache_bytes, device, policy=policy, tenant_share=tenant_share
        )
        return cls(loaded.model, loaded.tokenizer, cache, name=loaded.name)

    @property
    def layout(self) -> KVLayout:
        return layout_of(self.model.config, next(self.model.parameters()).dtype)

    def with_cache(self, cache: PrefixCache) -> Engine:
        """The same model and tokenizer over another cache (e.g. a NullCache baseline)."""
        return Engine(self.model, self.tokenizer, cache, name=self.name)

    # --- requests ------------------------------------------------------------------------

    def request(
        self,
        prompt: Prompt,
        params: SamplingParams = DEFAULT_PARAMS,
        *,
        namespace: Hashable = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> Request:
        """Tokenize and validate ``prompt`` once, into the record ``run`` takes (see
        :meth:`Intake.request`). Raises InvalidRequestError naming the field, before any
        work on the cache."""
        return self.intake.request(
            prompt, params, namespace=namespace, default_max_tokens=default_max_tokens
        )

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
        request = self.request(prompt, SamplingParams.create(**sampling), namespace=namespace)
        return self._run(request, start)

    def run(self, request: Request) -> Generator[str | Completion, None, None]:
        """Generate for a request from :meth:`request`: text deltas, then the Completion
        (times from this call). Closing the generator early releases the cached blocks."""
        return self._run(request, time.perf_counter())

    def _run(self, request: Request, start: float) -> Generator[str | Completion, None, None]:
        prompt = _model_ids(request.ids)
        count = len(prompt)
        workspace = self._workspaces.acquire(count + request.max_tokens)
        lease: Lease | None = None
        try:
            lease = self.cache.lookup(request.ids, request.namespace)
            kv, reuse = self._restore(lease, workspace, count)
            logits = self.forward(prompt[reuse:], reuse, kv)
            decoding = Decoding(request, self.tokenizer, self.eos_ids)
            while True:
                delta = decoding.accept(logits)
                if delta:
                    yield delta
                if decoding.done:
                    break
                position = count + len(decoding.generated) - 1
                logits = self.forward(prompt.new_tensor(decoding.generated[-1:]), position, kv)
            # The KV covers every token fed to the model: the prompt and all generated tokens
            # but the last one.
            fed = TokenBytes(request.ids + as_token_bytes(decoding.generated[:-1]))
            self.cache.store(fed, workspace.kv(token_count(fed)), request.namespace)
            yield decoding.completion(count, reuse, start)
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

    def forward(self, ids: torch.Tensor, position: int, kv: DynamicCache) -> torch.Tensor:
        """Feed ``ids`` (``[n]`` int64) at positions ``position...`` on top of ``kv`` (a cache
        holding ``position`` tokens, which grows by ``n``); return the last ``[vocab]`` logits.
        The one place the model runs; model calls are serialized across threads."""
        input_ids = ids.to(self.device)[None]
        positions = torch.arange(position, position + len(ids), device=self.device)[None]
        with self.model_lock, torch.inference_mode():
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
        model_ids = _model_ids(ids)
        workspace = self._workspaces.acquire(len(model_ids))
        try:
            with self.cache.lookup(ids, namespace) as lease:
                kv, reuse = self._restore(lease, workspace, len(model_ids))
            return NextTokenLogits(self.forward(model_ids[reuse:], reuse, kv), reuse)
        finally:
            self._workspaces.release(workspace)


def _model_ids(ids: TokenBytes) -> torch.Tensor:
    """The model's input form of canonical ids: ``[n]`` int64 (a copy, in C)."""
    return torch.from_numpy(np.frombuffer(ids, dtype=np.uint32).astype(np.int64))
