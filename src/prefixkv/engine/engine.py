"""Engine: a Hugging Face causal LM, its tokenizer and a prefix KV cache.

It validates requests once (:class:`~prefixkv.engine.intake.Intake`) and owns the one place
the serial path runs the model (:meth:`Engine.forward`); ``generate`` and ``stream`` run a
request on its :class:`~prefixkv.engine.serial.SerialRunner` over a sink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Hashable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache

from prefixkv.cache.layout import KVLayout
from prefixkv.cache.paged import DEFAULT_CAPACITY_BYTES
from prefixkv.cache.protocol import BlockStore
from prefixkv.engine.batch.records import StepReport
from prefixkv.engine.intake import DEFAULT_MAX_TOKENS, Intake
from prefixkv.engine.kvbridge import layout_of, new_cache
from prefixkv.engine.logprob_records import PromptTokenLogprob
from prefixkv.engine.pieces import pieces_of
from prefixkv.engine.prompt_logprobs import prompt_logprobs
from prefixkv.engine.prompts import Prompt, prompt_ids
from prefixkv.engine.request import Completion, Request, SamplingParams
from prefixkv.engine.role import Delivery
from prefixkv.engine.serial import SerialRunner
from prefixkv.engine.sinks import Collect
from prefixkv.index.policy import EvictionPolicy
from prefixkv.models.family import text_config
from prefixkv.tokens import TokenBytes

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
        self,
        model: Any,
        tokenizer: Any,
        cache: BlockStore,
        *,
        name: str = "model",
        on_step: Callable[[StepReport], None] = lambda report: None,
    ) -> None:
        """``on_step``: told of every forward pass of the serial runner (``serial``)."""
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
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)
        self.intake = Intake(tokenizer, self.vocab_size, self.context_length)
        self.serial = SerialRunner(self, on_step)
        """The serial path: what ``generate``/``stream`` run on, and a server's runner for
        models the batch runner cannot run."""

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
        weights: str = "auto",
        activations: str = "fp32",
    ) -> Engine:
        """Load ``model`` offline (see :func:`prefixkv.engine.loader.load_model`) with a
        PrefixKVCache of ``cache_bytes`` (``policy`` and ``tenant_share`` as there), built by
        :func:`prefixkv.engine.build.build` (which builds any other cache). ``linear_kernel``
        picks what runs the linear layers (see :mod:`prefixkv.engine.linear`; ValueError for
        an unknown name), ``weights`` what the native one streams (see
        :mod:`prefixkv.engine.weights`) and ``activations`` what it multiplies them with
        (see :mod:`prefixkv.engine.activations`)."""
        from prefixkv.engine.build import EngineSettings, build

        settings = EngineSettings(
            model=model,
            device=device,
            dtype=dtype,
            model_cache_dir=cache_dir,
            linear_kernel=linear_kernel,
            weights=weights,
            activations=activations,
            cache_bytes=cache_bytes,
            block_size=block_size,
            eviction_policy=policy,
            tenant_share=tenant_share,
        )
        return build(settings).engine

    @property
    def layout(self) -> KVLayout:
        return layout_of(self.model.config, next(self.model.parameters()).dtype)

    def with_cache(self, cache: BlockStore) -> Engine:
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

    def tokenize(self, prompt: Prompt, *, add_generation_prompt: bool = True) -> TokenBytes:
        """See :meth:`Intake.tokens`."""
        return self.intake.tokens(prompt, add_generation_prompt=add_generation_prompt)

    def detokenize(self, ids: Sequence[int]) -> str:
        """See :meth:`Intake.text`."""
        return self.intake.text(ids)

    def generate(
        self, prompt: Prompt, *, namespace: Hashable = None, **sampling: Any
    ) -> Completion:
        """Run one request to completion. ``sampling``: max_tokens, temperature, top_p, seed,
        stop, the logits controls, logprobs (see SamplingParams.create). Raises InvalidRequestError before any work on bad
        input, leaving the cache untouched."""
        start = time.perf_counter()
        request = self.request(prompt, SamplingParams.create(**sampling), namespace=namespace)
        sink = Collect()
        for _ in self.serial.steps(request, sink, start):
            pass
        return sink.result()

    def stream(
        self, prompt: Prompt, *, namespace: Hashable = None, **sampling: Any
    ) -> Generator[Delivery, None, None]:
        """Validate now, then return a generator of text deltas (and TokenLogprobs when
        asked for) ending with the Completion.
        Closing it early (``close()``) stops generation and releases the cached blocks."""
        start = time.perf_counter()
        request = self.request(prompt, SamplingParams.create(**sampling), namespace=namespace)
        return self._stream(request, start)

    def run(self, request: Request) -> Generator[Delivery, None, None]:
        """Generate for a request from :meth:`request`: text deltas, then the Completion
        (times from this call). Closing the generator early releases the cached blocks."""
        return self._stream(request, time.perf_counter())

    def _stream(self, request: Request, start: float) -> Generator[Delivery, None, None]:
        """The serial runner's steps over a Collect sink, read between tokens."""
        sink = Collect()
        steps = self.serial.steps(request, sink, start)
        try:
            for _ in steps:
                yield from sink.take()
            yield from sink.take()
        finally:
            steps.close()

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

    def forward_every(self, ids: torch.Tensor, position: int, kv: DynamicCache) -> torch.Tensor:
        """As :meth:`forward`, but ``[n, vocab]``: the logits at every one of ``ids``."""
        input_ids = ids.to(self.device)[None]
        positions = torch.arange(position, position + len(ids), device=self.device)[None]
        with self.model_lock, torch.inference_mode():
            out = self.model(
                input_ids=input_ids, position_ids=positions, past_key_values=kv, use_cache=True
            )
        logits: torch.Tensor = out.logits[0]
        return logits.float()

    def prompt_logprobs(self, ids: TokenBytes, top: int) -> tuple[PromptTokenLogprob, ...]:
        """See :func:`prefixkv.engine.prompt_logprobs.prompt_logprobs` (a prefill of its
        own: long, and it takes the model between the runner's steps)."""
        return prompt_logprobs(self, pieces_of(self.tokenizer), ids, top)

    def next_token_logits(self, prompt: Prompt, *, namespace: Hashable = None) -> NextTokenLogits:
        """Logits for the token after ``prompt``, prefilling only what the cache lacks.
        Stores nothing; for scoring and for checking exactness against a recomputation."""
        ids = prompt_ids(prompt, self.tokenizer, self.vocab_size)
        logits, reuse = self.serial.next_token_logits(ids, namespace)
        return NextTokenLogits(logits, reuse)
