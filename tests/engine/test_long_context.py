"""Exactness at 32K tokens, on a tiny Llama with a 32K context (:func:`.tiny.long_llama`):
prompts of 32,764 tokens get from the batch runner, cold, over a cached prefix, batched
together and preempted midway, on both attention kernels, the greedy tokens each gets alone
on the serial engine over no cache, and at every step the same logits up to rounding; the
serial engine over a cached prefix too. transformers' own ``generate`` on the same weights
(PyTorch's linear layers, where the engine runs the native ones) gives those tokens and
logits.

The logits are compared because tokens alone would miss a lost block 32K back: such a
block moves this model's logits far beyond rounding (checked first) but rarely flips a
token: zeroing the first block of every prefix reused from the cache left the batched and
the preempted requests' tokens as they were, and moved their logits by 3e-4.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from prefixkv import NullCache, PrefixKVCache
from prefixkv.engine.batch.runner import BatchLimits
from prefixkv.engine.engine import Completion, Engine
from prefixkv.engine.kvbridge import layout_of
from prefixkv.engine.request import SamplingParams

from .batch.test_runner import Sink
from .conftest import one_thread
from .kernel_matrix import kernel_runner, on_linear_kernel
from .tiny import long_llama, tiny_tokenizer

pytestmark = pytest.mark.slow

BLOCK = 16
NEW = 16
"""Tokens generated per request."""
PROMPT = 32 * 1024 - 4
"""A prompt fills 2,048 blocks but for 4 slots: its 5th generated token needs a 2,049th."""
SHARED = 32 * 1024 - 64
"""The tokens (2,044 whole blocks) the sharing prompt has in common with the first."""
CONTEXT = 32 * 1024 + NEW
ATOL = 1e-5
"""Rounding: the kernels sum in other orders (up to 1.1e-6 apart on the logits here)."""


def _ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, 80) for _ in range(n)]


FIRST = _ids(1, PROMPT)
PROMPTS = {
    "first": FIRST,
    "other": _ids(2, PROMPT),  # nothing in common with the first
    "sharing": FIRST[:SHARED] + _ids(3, PROMPT - SHARED),  # the first with another ending
}


def _blocks(tokens: int) -> int:
    return -(-tokens // BLOCK)


ROOMY = 3 * _blocks(PROMPT + NEW)
"""Blocks for the three requests whole: nothing is preempted or evicted."""
TIGHT = _blocks(PROMPT) + _blocks(PROMPT) - SHARED // BLOCK + 1
"""Blocks for the first prompt, the sharing prompt's own blocks and one more: both can
start, but not both reach their 5th generated token."""


@dataclass(frozen=True)
class Alone:
    """A request served alone on the serial engine over no cache (no reuse)."""

    completion: Completion
    logits: torch.Tensor
    """``[steps, vocab]``: the logits each generated token was chosen from."""


@contextmanager
def recorded(model: Any) -> Iterator[list[torch.Tensor]]:
    """The ``[rows, vocab]`` logits of every forward pass of ``model`` meanwhile, in order:
    one row per sampled token (the serial engine and the batch runner keep no others). Read
    at the output head, which both the model's own forward and the batch runner's lean pass
    (which does not call the model's forward) call once a pass."""
    rows: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: rows.append(out.reshape(-1, out.shape[-1]).float().clone())
    )
    try:
        yield rows
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[Any, Any]]:
    """The model as transformers built it, and a copy on the native linear kernel."""
    with one_thread():
        plain = long_llama(CONTEXT)
        yield plain, on_linear_kernel(copy.deepcopy(plain), "native")


@pytest.fixture(scope="module")
def alone(models: tuple[Any, Any]) -> dict[str, Alone]:
    """Each prompt served alone on the serial engine over no cache, on the native kernel."""
    serial = _serial(models[1])
    served = {}
    for name, prompt in PROMPTS.items():
        with recorded(models[1]) as rows:
            completion = serial.generate(prompt, max_tokens=NEW)
        served[name] = Alone(completion, torch.cat(rows))
    return served


def _serial(model: Any) -> Engine:
    return Engine(model, tiny_tokenizer(), NullCache(layout_of(model.config, torch.float32), BLOCK))


def _batch(model: Any, blocks: int) -> Engine:
    lay = layout_of(model.config, torch.float32)
    cache = PrefixKVCache(lay, BLOCK, lay.block_bytes(BLOCK) * blocks)
    return Engine(model, tiny_tokenizer(), cache)


def _request(engine: Engine, name: str) -> Any:
    return engine.request(PROMPTS[name], SamplingParams(max_tokens=NEW))


def assert_logits_match(rows: list[torch.Tensor], served: list[Alone]) -> None:
    """``rows`` (recorded while the ``served`` requests ran again, interleaved in any order)
    are their logits alone up to rounding: each row lies within ATOL of one step of one, and
    each step of each has exactly one row (any two steps lie about 1e-3 apart or more here,
    100 ATOL)."""
    want = torch.cat([s.logits for s in served])  # [steps, vocab]
    distance = (torch.cat(rows)[:, None, :] - want[None, :, :]).abs().amax(dim=-1)
    nearest = distance.min(dim=1)
    worst = float(nearest.values.max())
    assert worst <= ATOL, f"a row lies {worst:.3g} from the nearest step alone"
    assert sorted(nearest.indices.tolist()) == list(range(len(want)))


def _assert_clean(engine: Engine) -> None:
    stats = engine.cache.stats()
    assert stats.pinned_blocks == 0
    assert stats.free_blocks + stats.used_blocks == stats.total_blocks
    engine.cache.check_invariants()


def test_tokens_32k_back_weigh_on_the_answer(
    models: tuple[Any, Any], alone: dict[str, Alone]
) -> None:
    """Another first block moves the logits after the prompt by far more than rounding, and
    the prompt's second half alone gets other tokens than the whole: the checks below would
    see a cache that lost or misplaced a block 32K back."""
    serial = _serial(models[1])
    first = alone["first"]
    moved = serial.next_token_logits(_ids(4, BLOCK) + FIRST[BLOCK:]).logits
    assert float((moved - first.logits[0]).abs().max()) > 10 * ATOL
    half = serial.generate(FIRST[PROMPT // 2 :], max_tokens=NEW)
    assert half.token_ids != first.completion.token_ids
    assert len(first.completion.token_ids) == NEW  # no early stop hides the later tokens
    assert len(set(first.completion.token_ids)) > NEW // 4  # nor one token repeated


def test_transformers_own_generate_gives_the_engines_tokens_and_logits(
    models: tuple[Any, Any], alone: dict[str, Alone]
) -> None:
    """transformers' greedy tokens and logits at each step are the serial engine's (on the
    native linear kernel) and the batch runner's on the same PyTorch linear layers."""
    ids = torch.tensor([FIRST])
    with torch.inference_mode():
        out = models[0].generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
        )
    first = alone["first"]
    tokens = out.sequences[0, PROMPT:].tolist()
    assert tokens == list(first.completion.token_ids)
    logits = torch.cat(out.logits).float()
    torch.testing.assert_close(logits, first.logits, rtol=0, atol=ATOL)
    # The batch runner on PyTorch's own linear layers too.
    engine = _batch(models[0], _blocks(PROMPT + NEW))
    runner = kernel_runner(engine, "native", BatchLimits())
    with recorded(models[0]) as rows:
        got = runner.run_all([_request(engine, "first")])[0]
    assert list(got.token_ids) == tokens
    torch.testing.assert_close(torch.cat(rows), logits, rtol=0, atol=ATOL)


@pytest.mark.parametrize("attention", ["native", "torch"])
def test_batched_long_requests_match_each_alone_cold_and_cached(
    models: tuple[Any, Any], alone: dict[str, Alone], attention: str
) -> None:
    """Three 32K-token requests served together (two computed from scratch, one reusing
    the first's blocks as they are computed), then the first again over its cached prefix,
    and the sharing one on the serial engine over the runner's cache: each gets what it gets
    alone."""
    model = models[1]
    engine = _batch(model, ROOMY)
    runner = kernel_runner(engine, attention, BatchLimits())
    with recorded(model) as rows:
        together = runner.run_all([_request(engine, name) for name in PROMPTS])
    for name, got in zip(PROMPTS, together, strict=True):
        assert got.token_ids == alone[name].completion.token_ids, name
    assert [c.cached_tokens for c in together] == [0, 0, SHARED]
    assert runner.preemptions == 0
    assert_logits_match(rows, list(alone.values()))
    cached = (PROMPT - 1) // BLOCK * BLOCK  # every whole block but the last token's
    with recorded(model) as rows:
        again = runner.run_all([_request(engine, "first")])[0]
    assert (again.cached_tokens, again.token_ids) == (cached, alone["first"].completion.token_ids)
    assert_logits_match(rows, [alone["first"]])
    with recorded(model) as rows:
        serial = engine.generate(PROMPTS["sharing"], max_tokens=NEW)
    assert (serial.cached_tokens, serial.token_ids) == (
        cached,
        alone["sharing"].completion.token_ids,
    )
    assert_logits_match(rows, [alone["sharing"]])
    _assert_clean(engine)


@pytest.mark.parametrize("attention", ["native", "torch"])
def test_a_long_request_preempted_midway_matches_running_alone(
    models: tuple[Any, Any], alone: dict[str, Alone], attention: str
) -> None:
    """Two 32K-token requests decoding together in a pool that cannot hold both answers:
    the newer is preempted midway (its blocks indexed, its table closed) and resumes from
    its cached prefix once the other is done; each gets what it gets alone."""
    engine = _batch(models[1], TIGHT)
    runner = kernel_runner(engine, attention, BatchLimits())
    sinks = {name: Sink() for name in ("first", "sharing")}
    for name, sink in sinks.items():
        runner.submit(_request(engine, name), sink)
    at_preemption: list[dict[str, tuple[int, bool]]] = []  # text deltas, still running
    with recorded(models[1]) as rows:
        while runner.num_running or runner.num_waiting:
            report = runner.step()
            if report is not None and report.preempted:
                at_preemption.append(
                    {n: (len(s.items), s.outcome is None) for n, s in sinks.items()}
                )
    assert runner.preemptions >= 1
    # Midway: both had begun answering and neither had finished.
    assert at_preemption and all(n > 0 and running for n, running in at_preemption[0].values())
    for name, sink in sinks.items():
        assert sink.completion.token_ids == alone[name].completion.token_ids, name
    assert sinks["sharing"].completion.cached_tokens == SHARED
    assert_logits_match(rows, [alone["first"], alone["sharing"]])
    _assert_clean(engine)
