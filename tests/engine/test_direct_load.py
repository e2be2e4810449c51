"""A GGUF loads straight from its rows (never a float32 model) and a bf16 folder keeps its
linear weights bf16; either way the outputs equal, bit for bit, those of the float32 path:
transformers' own GGUF load in float32 with every layer packed as fp32 (or the folder loaded
in float32), alone and batched, prefilled and decoded."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from prefixkv import Engine
from prefixkv.engine.build import EngineSettings, assemble
from prefixkv.engine.embedding import RowEmbedding
from prefixkv.engine.linear import formats_of
from prefixkv.engine.loader import load_model, load_with_transformers, open_model, resolve_model
from prefixkv.engine.native_linear import NativeLinear
from prefixkv.engine.weights import Fp32Weights

from .conftest import with_own_cache
from .test_weights import PROMPTS, _bits, _engine, _replies
from .tiny_gguf import TEMPLATE, tiny_bpe_tokenizer

# GGUF tensor name -> GGML type, over a Q4_1 file: every kept format, an F32 matrix, a
# join of two formats (layer 0's q/k/v) and an embedding of its own type
MIXED = {"blk.0.attn_v.weight": "Q8_0", "blk.1.ffn_down.weight": "Q4_0"}
MIXED |= {"blk.1.attn_output.weight": "F32", "token_embd.weight": "Q8_0"}
FILES: dict[str, dict[str, Any]] = {
    "q8_0": {"matrix_type": "Q8_0"},
    "q4_0": {"matrix_type": "Q4_0"},
    "q4_1": {"matrix_type": "Q4_1", "arch": "qwen2"},  # biases: read as the norms are
    "mixed": {"matrix_type": "Q4_1", "types": MIXED},
}


def _reference(path: Path, kernel: str = "native") -> Engine:
    """transformers' own GGUF load in float32, its linear layers packed as fp32 by the native
    kernel (``native``) or left to PyTorch (``torch``): the fp32 path."""
    model, tokenizer = load_with_transformers(path, torch.float32)
    if kernel == "native":
        NativeLinear(Fp32Weights()).install(model)
    settings = EngineSettings(model=str(path), cache_bytes=1 << 20, block_size=4)
    return assemble(settings, model, tokenizer, path.stem).engine


def _decoded(engine: Engine, prompt: str) -> torch.Tensor:
    """Logits of every position, the first two prefilled and the rest decoded one token at
    a time over the KV they left: int32 bits ``[1, tokens, vocab]``."""
    ids = engine.tokenizer(prompt, return_tensors="pt").input_ids
    cache = DynamicCache(config=engine.model.config)
    with torch.inference_mode():
        steps = [engine.model(ids[:, :2], past_key_values=cache, use_cache=True).logits]
        for i in range(2, ids.shape[1]):
            step = engine.model(ids[:, i : i + 1], past_key_values=cache, use_cache=True)
            steps.append(step.logits)
    return torch.cat(steps, dim=1).view(torch.int32)


@pytest.mark.parametrize("name", sorted(FILES))
def test_direct_load_equals_transformers_fp32_bit_for_bit(name: str, tmp_path: Path) -> None:
    kept = _engine(tmp_path, name, "auto", **FILES[name])
    widened = _engine(tmp_path, name, "fp32")
    reference = _reference(tmp_path / f"{name}.gguf")
    assert "q" in formats_of(kept.model) and formats_of(widened.model) == "f32 9"
    for prompt in PROMPTS:
        want = _bits(reference, prompt)
        assert torch.equal(_bits(kept, prompt), want), prompt
        assert torch.equal(_bits(widened, prompt), want), prompt
        assert torch.equal(_decoded(kept, prompt), _decoded(reference, prompt)), prompt
    alone, batched = _replies(kept)
    assert alone == batched == _replies(reference)[0]


def test_without_the_native_kernel_layers_are_float32_from_the_rows(tmp_path: Path) -> None:
    kept = _engine(tmp_path, "torch", "auto", linear_kernel="torch", matrix_type="Q4_1")
    reference = _reference(tmp_path / "torch.gguf", kernel="torch")
    assert formats_of(kept.model) == "torch float32 15"  # not joined: 7 a block, the head
    assert type(kept.model.get_input_embeddings()) is torch.nn.Embedding  # the head reads it
    assert not any(p.is_meta for p in kept.model.parameters())
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(reference, prompt)), prompt


def test_types_the_kernel_does_not_read_become_bf16_with_one_notice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    types = {"blk.0.attn_output.weight": "Q5_0", "blk.1.attn_output.weight": "Q5_1"}
    types |= {"blk.1.ffn_down.weight": "F16", "blk.0.ffn_up.weight": "Q5_0"}  # up joins gate
    with caplog.at_level(logging.INFO, logger="prefixkv.engine"):
        kept = _engine(tmp_path, "unread", "auto", matrix_type="Q8_0", types=types)
    notices = [r.getMessage() for r in caplog.records if "do not read" in r.getMessage()]
    assert len(notices) == 1
    assert "f16 1, q5_0 2, q5_1 1" in notices[0] and "precision change" in notices[0]
    # every unread tensor becomes bf16, up too: joined with its Q8_0 gate, it is packed as a
    # run of its own beside the gate's blocks (WeightFormat.runs)
    assert formats_of(kept.model) == "bf16 4, q8_0 6"
    reference = _reference(tmp_path / "unread.gguf")
    got, want = (_bits(e, PROMPTS[0]).view(torch.float32) for e in (kept, reference))
    assert torch.allclose(got, want, atol=1e-2)
    alone, batched = _replies(kept)
    assert alone == batched


def test_opening_a_gguf_never_makes_a_float32_linear_weight(tmp_path: Path) -> None:
    _engine(tmp_path, "open", "auto", matrix_type="Q4_0")  # writes the file and its config
    opened = open_model(str(tmp_path / "open.gguf"), cache_dir=tmp_path / "cache")
    linears = [m for m in opened.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.is_meta for m in linears)
    assert opened.model.get_input_embeddings().weight.is_meta
    assert {raw.format for raw in opened.rows.values()} == {"q4_0"}


def _bf16_folder(tmp: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp / "bf16"
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tiny_bpe_tokenizer(),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        chat_template=TEMPLATE,
    )
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_bf16_folder_keeps_its_linear_weights_bf16_and_equals_fp32(tmp_path: Path) -> None:
    folder = _bf16_folder(tmp_path)
    opened = open_model(str(folder))
    linears = [m for m in opened.model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    small = [p for n, p in opened.model.named_parameters() if "norm" in n]
    assert small and all(p.dtype == torch.float32 for p in small)
    kw: dict[str, Any] = {"cache_bytes": 1 << 20, "block_size": 4}
    kept = Engine.from_pretrained(str(folder), **kw)
    plain = Engine.from_pretrained(str(folder), dtype=torch.float32, **kw)  # the old path
    assert (
        formats_of(kept.model) == formats_of(plain.model) == "bf16 9"
    )  # 4 a block (joined), the head
    table = kept.model.get_input_embeddings()
    assert isinstance(table, RowEmbedding) and table.format == "bf16"
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt
        assert torch.equal(_decoded(kept, prompt), _decoded(plain, prompt)), prompt
    widened = load_model(str(folder)).model
    assert all(p.dtype == torch.float32 for p in widened.parameters())


@pytest.mark.smollm2
def test_smollm2_direct_load_equals_the_fp32_path(smollm2_engine: Engine) -> None:
    """The default load (the file's Q4_1/Q8_0 rows) against transformers' own load in
    float32 with fp32 layers: first-token logits bit for bit, the same greedy replies."""
    kept = with_own_cache(smollm2_engine, 64 << 20)
    reference = _reference(resolve_model("smollm2"))
    assert formats_of(kept.model) == "q4_1 120, q8_0 1"
    prompts = ["The capital of France is", "def fib(n):", "Write a haiku about the sea."]
    for prompt in prompts:
        assert torch.equal(_bits(kept, prompt)[:, -1], _bits(reference, prompt)[:, -1]), prompt
        got = kept.generate(prompt, max_tokens=16, temperature=0).token_ids
        assert got == reference.generate(prompt, max_tokens=16, temperature=0).token_ids
