"""Sliding-window models' logits, not only their greedy tokens: a prompt prefilled in
chunks, then decoded token by token, through paged attention over scattered blocks (each
attention kernel), and through the serial engine on a cached prefix longer than the window,
equal transformers' own logits for the whole prompt up to rounding. The tiny models have a
window of :data:`~tests.models.tiny_families.WINDOW` tokens; the prompt is five windows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from prefixkv import PrefixKVCache
from prefixkv.engine.batch import attention, kernels
from prefixkv.engine.batch.attention import PagedKV, SeqSpan, StepLayout
from prefixkv.engine.batch.plan import runs_of
from prefixkv.engine.engine import Engine
from prefixkv.engine.kvbridge import layer_kinds, layout_of
from prefixkv.kernels.build import NativeUnavailable
from tests.engine.conftest import one_thread
from tests.engine.kernel_matrix import unavailable
from tests.engine.tiny import tiny_tokenizer

from .tiny_families import LLAMA_LIKE, UNTIED, WINDOW, tiny_model

BLOCK = 4
PROMPT = [(7 * i + 3) % 70 + 5 for i in range(5 * WINDOW)]
CHUNKS = (7, 12, 9, *[1] * 12)
"""Prefill chunks, then decode steps: 40 tokens, chunks straddling window boundaries."""


def _mistral() -> Any:
    from transformers import MistralConfig

    return MistralConfig(**LLAMA_LIKE, sliding_window=WINDOW)


def _qwen2() -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        **LLAMA_LIKE, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1
    )


def _phi3() -> Any:
    from transformers import Phi3Config

    return Phi3Config(**LLAMA_LIKE, sliding_window=WINDOW)


def _gemma2() -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(**LLAMA_LIKE, **UNTIED, head_dim=16, sliding_window=WINDOW)


def _gemma3() -> Any:
    from transformers import Gemma3TextConfig

    layers = ["sliding_attention", "full_attention"]
    return Gemma3TextConfig(
        **LLAMA_LIKE, **UNTIED, head_dim=16, sliding_window=WINDOW, layer_types=layers
    )


CONFIGS: dict[str, Callable[[], Any]] = {
    "mistral": _mistral,
    "qwen2_mixed": _qwen2,
    "phi3": _phi3,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
}


@pytest.fixture(params=CONFIGS, ids=list(CONFIGS))
def model(request: pytest.FixtureRequest) -> Iterator[Any]:
    with one_thread():
        built = tiny_model(CONFIGS[request.param](), seed=5)
        assert "sliding_attention" in layer_kinds(built.config)
        yield built


def paged_logits(model: Any, kernel: kernels.AttentionKernel) -> torch.Tensor:
    """``[len(PROMPT), vocab]``: the prompt fed in :data:`CHUNKS` through paged attention,
    its blocks scattered over the pool in reverse order."""
    lay = layout_of(model.config, torch.float32)
    count = -(-len(PROMPT) // BLOCK)
    table = [2 * (count - i) for i in range(count)]  # reversed, every other block
    data = torch.zeros(lay.num_layers, 2, lay.num_kv_heads, 2 * count + 1, BLOCK, lay.head_dim)
    logits, done = [], 0
    for size in CHUNKS:
        positions = torch.arange(done, done + size)
        slots = torch.tensor([table[p // BLOCK] * BLOCK + p % BLOCK for p in positions.tolist()])
        span = SeqSpan(0, size, done + size, runs_of(table, done + size, BLOCK))
        plan, others = kernel.plan([span], torch.device("cpu"))
        step = StepLayout(slots, others, plan, () if others else (span,), kernel=kernel)
        with torch.inference_mode(), attention.active(model):
            out = model(
                input_ids=torch.tensor([PROMPT[done : done + size]]),
                position_ids=positions[None],
                past_key_values=PagedKV(data, step),
                use_cache=True,
                step=step,
            )
        logits.append(out.logits[0])
        done += size
    assert done == len(PROMPT)
    return torch.cat(logits)


@pytest.mark.parametrize("name", ["torch", "native"])
def test_paged_logits_are_transformers_own(model: Any, name: str) -> None:
    heads = int(model.config.num_attention_heads)
    try:
        kernel = kernels.attention_kernel(
            name, heads, int(model.config.num_key_value_heads), torch.float32, torch.device("cpu")
        )
    except NativeUnavailable as exc:
        unavailable(f"attention kernel {name!r} cannot run here: {exc}")
    with one_thread(), torch.inference_mode():
        want = model(torch.tensor([PROMPT])).logits[0]
        got = paged_logits(model, kernel)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_serial_logits_on_a_cached_prefix_longer_than_the_window(model: Any) -> None:
    lay = layout_of(model.config, torch.float32)
    engine = Engine(model, tiny_tokenizer(), PrefixKVCache(lay, BLOCK, lay.block_bytes(BLOCK) * 64))
    with one_thread():
        engine.generate(PROMPT[: 4 * WINDOW], max_tokens=1)
        hit = engine.next_token_logits(PROMPT)
        with torch.inference_mode():
            want = model(torch.tensor([PROMPT])).logits[0, -1]
    assert hit.cached_tokens >= 3 * WINDOW
    torch.testing.assert_close(hit.logits, want, rtol=1e-4, atol=1e-4)


def test_a_sliding_model_loads_from_its_folder_and_serves(tmp_path: Path) -> None:
    from prefixkv import NullCache
    from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
    from prefixkv.engine.request import SamplingParams
    from tests.engine.batch.test_runner import Sink, drive

    with one_thread():
        tiny_model(_gemma2(), seed=5).save_pretrained(tmp_path)
        tiny_tokenizer().save_pretrained(tmp_path)
        engine = Engine.from_pretrained(str(tmp_path), block_size=BLOCK, cache_bytes=1 << 22)
        plain = engine.with_cache(NullCache(engine.layout, BLOCK))
        engine.generate(PROMPT[: 3 * WINDOW], max_tokens=2)
        hit = engine.generate(PROMPT, max_tokens=6)
        assert hit.cached_tokens >= 2 * WINDOW
        assert hit.token_ids == plain.generate(PROMPT, max_tokens=6).token_ids
        runner = BatchRunner(engine, BatchLimits(max_running=2, max_batch_tokens=12))
        sink = Sink()
        runner.submit(engine.request(PROMPT, SamplingParams(max_tokens=6)), sink)
        drive(runner)
        assert sink.completion.token_ids == hit.token_ids
