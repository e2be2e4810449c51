"""The real default model (SmolLM2-135M-Instruct): cached outputs equal uncached ones."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from prefixkv import NullCache
from prefixkv.bench import workloads
from prefixkv.engine.engine import Engine
from prefixkv.engine.request import InvalidRequestError
from prefixkv.tokens import tokens_from_bytes

from .conftest import with_own_cache

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def pair(smollm2_engine: Engine) -> tuple[Engine, Engine]:
    cached = with_own_cache(smollm2_engine, 256 << 20)
    return cached, cached.with_cache(NullCache(cached.layout, cached.cache.block_size))


def _prompts() -> list[Any]:
    prompts: list[Any] = [r.chat() for r in workloads.chat_workload(8)]
    prompts += [r.chat() for r in workloads.rag_workload(documents=2, questions=3, sentences=18)]
    prompts += [r.chat() for r in workloads.batch_workload(4)]
    return prompts


def test_twenty_plus_prompts_are_token_identical(pair: tuple[Engine, Engine]) -> None:
    cached, plain = pair
    results = []
    for prompt in _prompts():
        a, b = cached.generate(prompt, max_tokens=12), plain.generate(prompt, max_tokens=12)
        assert a.prompt_tokens >= 32
        assert a.token_ids == b.token_ids, (prompt, a.text, b.text)
        results.append(a)
    # multi-turn: each turn's prompt holds the whole history, replies included
    messages: list[dict[str, str]] = [{"role": "system", "content": workloads.SYSTEM_PROMPT}]
    for user in workloads.multiturn_user_turns(1, 4)[0]:
        messages.append({"role": "user", "content": user})
        a, b = cached.generate(messages, max_tokens=12), plain.generate(messages, max_tokens=12)
        assert a.token_ids == b.token_ids
        messages.append({"role": "assistant", "content": a.text})
        results.append(a)
    assert len(results) >= 20
    hits = [r for r in results if r.cached_tokens > 0]
    assert len(hits) >= len(results) - 4  # only the first of each shared prefix misses
    assert cached.cache.stats().pinned_blocks == 0
    cached.cache.check_invariants()


def test_logits_bitwise_vs_same_split_and_close_to_one_pass(pair: tuple[Engine, Engine]) -> None:
    cached, _ = pair
    model = cached.model
    first, second = (
        r.chat() for r in workloads.rag_workload(documents=1, questions=2, sentences=18)
    )
    cached.cache.reset()
    cached.generate(first, max_tokens=1)  # caches the KV of one pass over `first`
    ids_first = tokens_from_bytes(cached.request(first).ids)
    ids_second = tokens_from_bytes(cached.request(second).ids)
    logits, reuse = cached.next_token_logits(second)
    assert reuse >= 300
    with torch.inference_mode():
        kv = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids_first]), past_key_values=kv, use_cache=True)
        kv.crop(reuse - len(ids_first))
        ref = model(
            input_ids=torch.tensor([ids_second[reuse:]]),
            position_ids=torch.arange(reuse, len(ids_second))[None],
            past_key_values=kv,
            use_cache=True,
            logits_to_keep=1,
        ).logits[0, -1]
        single = model(input_ids=torch.tensor([ids_second]), logits_to_keep=1).logits[0, -1]
    assert torch.equal(logits, ref.float())
    # One pass vs a split pass differ by float32 GEMM blocking: ~4e-5 observed on SmolLM2.
    torch.testing.assert_close(logits, single.float(), atol=2e-4, rtol=1e-4)
    assert int(logits.argmax()) == int(single.argmax())


def test_a_hopeless_prompt_is_refused_before_tokenizing(pair: tuple[Engine, Engine]) -> None:
    """1 MiB of text cannot fit 8,192 tokens of at most 81 characters: refused at once."""
    cached, _ = pair
    started = time.perf_counter()
    with pytest.raises(InvalidRequestError) as refused:
        cached.request("a" * (1 << 20))
    assert time.perf_counter() - started < 0.05  # tokenizing it takes about a second
    assert refused.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequestError) as chat:
        cached.request([{"role": "user", "content": "b" * (1 << 20)}])
    assert chat.value.param == "messages"
