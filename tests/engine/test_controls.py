"""The logits controls and logprobs on the tiny engine: what each control does to a real
generation, the same through the serial and the batch runner, and the same whether the
prompt was cached or not."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from prefixkv import NullCache, PrefixKVCache
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.engine import Completion, Engine
from prefixkv.engine.kvbridge import layout_of
from prefixkv.engine.pieces import Pieces
from prefixkv.engine.request import InvalidRequestError, SamplingParams

from .tiny import smollm2_tokenizer

BLOCK = 4
PROMPT = [5 + (i * 7) % 70 for i in range(23)]


def engines(parts: tuple[Any, Any]) -> tuple[Engine, Engine]:
    model, tokenizer = parts
    layout = layout_of(model.config, torch.float32)
    cached = Engine(model, tokenizer, PrefixKVCache(layout, BLOCK, layout.block_bytes(BLOCK) * 256))
    return cached, cached.with_cache(NullCache(layout, BLOCK))


def batched(engine: Engine, requests: list[dict[str, Any]]) -> list[Completion]:
    runner = BatchRunner(engine, BatchLimits())
    return runner.run_all([engine.request(PROMPT, SamplingParams.create(**r)) for r in requests])


CONTROLLED: list[dict[str, Any]] = [
    {"max_tokens": 12, "repetition_penalty": 1.5, "logprobs": 3},
    {"max_tokens": 12, "presence_penalty": 1.5, "frequency_penalty": 0.7, "logprobs": 0},
    {"max_tokens": 12, "logit_bias": {"9": 8, "12": -100}, "logprobs": 5},
    {"max_tokens": 12, "temperature": 0.8, "seed": 3, "frequency_penalty": 2, "logprobs": 2},
    {"max_tokens": 12},
]


def test_serial_and_batch_runners_apply_the_same_controls(parts: tuple[Any, Any]) -> None:
    cached, plain = engines(parts)
    alone = [plain.generate(PROMPT, **r) for r in CONTROLLED]
    together = batched(cached, CONTROLLED)
    for a, b in zip(alone, together, strict=True):
        assert a.token_ids == b.token_ids
        assert [x.chosen.token_id for x in a.logprobs] == [x.chosen.token_id for x in b.logprobs]
        for x, y in zip(a.logprobs, b.logprobs, strict=True):
            assert math.isclose(x.chosen.logprob, y.chosen.logprob, abs_tol=1e-4)
    plain_reply = alone[-1].token_ids
    assert all(a.token_ids != plain_reply for a in alone[:3])  # each control changed it


def test_seeded_sampling_with_controls_is_the_same_cached_or_not(parts: tuple[Any, Any]) -> None:
    cached, plain = engines(parts)
    sampling = {"max_tokens": 14, "temperature": 1.0, "repetition_penalty": 1.2}
    cached.generate(PROMPT, max_tokens=2)
    for seed in (1, 2):
        a = cached.generate(PROMPT, seed=seed, presence_penalty=0.5, **sampling)
        b = plain.generate(PROMPT, seed=seed, presence_penalty=0.5, **sampling)
        assert a.cached_tokens > 0 and a.token_ids == b.token_ids


def test_greedy_logprobs_are_the_top_of_their_list(parts: tuple[Any, Any]) -> None:
    _, plain = engines(parts)
    reply = plain.generate(PROMPT, max_tokens=10, logprobs=20)
    assert len(reply.logprobs) == len(reply.token_ids)
    for token, item in zip(reply.token_ids, reply.logprobs, strict=True):
        assert item.chosen.token_id == token == item.top[0].token_id
        assert item.chosen.logprob == item.top[0].logprob == max(c.logprob for c in item.top)
        assert [c.logprob for c in item.top] == sorted((c.logprob for c in item.top), reverse=True)
        assert len(item.top) == 20 and item.chosen.raw == item.chosen.token.encode()


def test_logprobs_sum_to_one_where_the_list_covers_the_mass(parts: tuple[Any, Any]) -> None:
    _, plain = engines(parts)
    favoured = {str(t): 100 for t in range(10, 30)}  # these 20 hold all but ~e-90 of it
    reply = plain.generate(PROMPT, max_tokens=4, logprobs=20, logit_bias=favoured)
    for item in reply.logprobs:
        assert 10 <= item.chosen.token_id < 30
        assert math.isclose(sum(math.exp(c.logprob) for c in item.top), 1.0, rel_tol=1e-5)


def test_logit_bias_forces_and_forbids(parts: tuple[Any, Any]) -> None:
    _, plain = engines(parts)
    forced = plain.generate(PROMPT, max_tokens=6, logit_bias={"40": 100}, temperature=1.5)
    assert forced.token_ids == (40,) * 6
    first = plain.generate(PROMPT, max_tokens=1).token_ids[0]
    other = plain.generate(PROMPT, max_tokens=1, logit_bias={str(first): -100}).token_ids[0]
    assert other != first


def test_stop_token_ids_end_the_reply(parts: tuple[Any, Any]) -> None:
    _, plain = engines(parts)
    free = plain.generate(PROMPT, max_tokens=12)
    stopper = free.token_ids[4]
    end = free.token_ids.index(stopper) + 1
    stopped = plain.generate(PROMPT, max_tokens=12, stop_token_ids=[stopper])
    assert stopped.finish_reason == "stop" and stopped.token_ids == free.token_ids[:end]


def test_min_tokens_and_ignore_eos_hold_the_end_off(parts: tuple[Any, Any]) -> None:
    cached, plain = engines(parts)
    eos = next(iter(plain.eos_ids))
    bias = {str(eos): 100}
    assert plain.generate(PROMPT, max_tokens=8, logit_bias=bias).token_ids == (eos,)
    held = plain.generate(PROMPT, max_tokens=8, logit_bias=bias, min_tokens=3)
    assert held.finish_reason == "stop" and len(held.token_ids) == 4
    assert eos not in held.token_ids[:3] and held.token_ids[3] == eos
    ignored = plain.generate(PROMPT, max_tokens=5, logit_bias=bias, ignore_eos=True)
    assert ignored.finish_reason == "length" and ignored.token_ids == (eos,) * 5
    assert (
        batched(cached, [{"max_tokens": 8, "logit_bias": bias, "min_tokens": 3}])[0].token_ids
        == held.token_ids
    )


@pytest.mark.parametrize("field", ["logit_bias", "stop_token_ids"])
def test_ids_outside_the_vocabulary_are_refused(parts: tuple[Any, Any], field: str) -> None:
    _, plain = engines(parts)
    value: Any = {"5000": 1} if field == "logit_bias" else [5000]
    with pytest.raises(InvalidRequestError) as caught:
        plain.generate(PROMPT, **{field: value})
    assert caught.value.param == field


def test_partial_utf8_tokens_report_their_own_bytes() -> None:
    tokenizer = smollm2_tokenizer()
    pieces = Pieces(tokenizer)
    text = "naïve café 🙂 日本語 ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    raws = [pieces.piece(t)[1] for t in ids]
    assert b"".join(raws) == text.encode()
    partial = [t for t, raw in zip(ids, raws, strict=True) if "\ufffd" in pieces.piece(t)[0]]
    assert partial  # the emoji and the CJK characters split across tokens
    for t in partial:
        assert pieces.piece(t)[1] and pieces.piece(t)[0] == tokenizer.decode([t])
