"""``prefixkv bench make-model``: random models of real shapes, written in every --weights
kind (tiny size here), load and answer, in the format they were written in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prefixkv import Engine
from prefixkv.bench.make_model import config_of, main, write_model
from prefixkv.bench.model_gguf import k_mix_type, use_more_bits
from prefixkv.bench.model_shapes import SHAPES, STD, VOCAB, tensor_groups, tensor_values
from prefixkv.engine.linear import formats_of, streamed_bytes
from prefixkv.engine.loader import load_model

# Parameter counts of the checkpoints whose shapes SHAPES copies (their safetensors metadata
# on the HF hub) and the vocabulary each really has, to check our tables against.
# The third field: whether the checkpoint ties its head (ours always do).
PUBLISHED = {
    ("llama", "1b"): (1_235_814_400, 128_256, True),  # meta-llama/Llama-3.2-1B
    ("llama", "3b"): (3_212_749_824, 128_256, True),  # meta-llama/Llama-3.2-3B
    ("llama", "8b"): (8_030_261_248, 128_256, False),  # meta-llama/Llama-3.1-8B
    ("qwen2", "1b"): (1_543_714_304, 151_936, True),  # Qwen/Qwen2.5-1.5B
    ("qwen2", "3b"): (3_085_938_688, 151_936, True),  # Qwen/Qwen2.5-3B
}


def _engine(path: Path, tmp: Path) -> Engine:
    return Engine.from_pretrained(
        str(path), cache_bytes=1 << 20, block_size=4, cache_dir=tmp / "cache", weights="auto"
    )


@pytest.mark.parametrize("weights", ["f32", "bf16", "q8_0", "q4_0", "q4_1"])
def test_a_tiny_model_loads_in_the_format_it_was_written_in_and_answers(
    weights: str, tmp_path: Path
) -> None:
    path = write_model(tmp_path / "out", "llama", "tiny", weights, seed=3)
    assert path.is_file() == (weights not in ("f32", "bf16"))
    engine = _engine(path, tmp_path)
    # q/k/v and gate/up joined: 4 linear layers a block, 2 blocks, and the tied head
    assert formats_of(engine.model) == f"{weights} 9"
    assert engine.model.config.vocab_size == VOCAB
    assert engine.tokenizer.convert_tokens_to_ids("<|im_start|>") == 1  # SmolLM2's tokenizer
    reply = engine.generate("hello world", max_tokens=6, temperature=0)
    assert 1 <= len(reply.token_ids) <= 6


def test_a_tiny_qwen2_gguf_has_biases_and_answers(tmp_path: Path) -> None:
    path = write_model(tmp_path / "out", "qwen2", "tiny", "q4_1")
    loaded = load_model(str(path), cache_dir=tmp_path / "cache")
    bias = loaded.model.model.layers[0].self_attn.q_proj.bias
    assert bias is not None and float(bias.detach().abs().max()) > 0
    engine = _engine(path, tmp_path)
    assert formats_of(engine.model) == "q4_1 9"
    assert len(engine.generate("hello", max_tokens=4, temperature=0).token_ids) >= 1


def test_the_gguf_holds_the_seeded_values_and_ones_for_norms(tmp_path: Path) -> None:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = write_model(tmp_path, "llama", "tiny", "q8_0", seed=7)
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    specs = [s for _, group in tensor_groups("llama", SHAPES[("llama", "tiny")]) for s in group]
    for index, spec in enumerate(specs):
        t = tensors[spec.gguf_name]
        values = dequantize(t.data, t.tensor_type).reshape(spec.shape)
        expected = tensor_values(spec, 7, index)
        # Q8_0 keeps each value within half a step of its block's scale (max |x| / 127)
        assert np.abs(values - expected).max() <= np.abs(expected).max() / 127, spec.gguf_name
    assert np.all(tensor_values(specs[1], 7, 1) == 1)  # the final norm
    embedding = tensor_values(specs[0], 7, 0)
    assert abs(float(embedding.std()) - STD) < STD / 50
    assert not np.array_equal(embedding, tensor_values(specs[0], 8, 0))  # the seed matters


@pytest.mark.parametrize("key", sorted(SHAPES))
def test_the_shape_table_matches_transformers_and_the_published_sizes(
    key: tuple[str, str],
) -> None:
    from transformers import AutoModelForCausalLM

    shape = SHAPES[key]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config_of(*key))
    assert model.model.layers[0].self_attn.head_dim == shape.head_dim
    assert shape.head_dim * shape.heads == shape.hidden
    expected = {n: tuple(p.shape) for n, p in model.state_dict().items() if n != "lm_head.weight"}
    specs = [s for _, group in tensor_groups(key[0], shape) for s in group]
    assert {s.hf_name: s.shape for s in specs} == expected
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    if key in PUBLISHED:
        count, vocab, tied = PUBLISHED[key]
        ours = sum(int(np.prod(s.shape)) for s in specs)
        head = 0 if tied else vocab * shape.hidden
        assert ours + (vocab - VOCAB) * shape.hidden + head == count


def test_the_command_line_writes_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--family", "qwen2", "--size", "tiny", "--weights", "q4_0", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert (tmp_path / "qwen2-tiny-q4_0.gguf").is_file()
    assert "qwen2-tiny-q4_0.gguf" in capsys.readouterr().out


def test_the_k_mixes_follow_llama_cpp_s_choice_of_types() -> None:
    # use_more_bits over 16 layers: the first and last eighth, and every third between
    assert [i for i in range(16) if use_more_bits(i, 16)] == [0, 1, 4, 7, 10, 13, 14, 15]
    assert k_mix_type("blk.4.attn_v.weight", 2048, "Q4_K", 16) == "Q6_K"
    assert k_mix_type("blk.5.attn_v.weight", 2048, "Q4_K", 16) == "Q4_K"
    assert k_mix_type("blk.15.ffn_down.weight", 8192, "Q5_K", 16) == "Q6_K"
    assert k_mix_type("blk.4.attn_q.weight", 2048, "Q5_K", 16) == "Q5_K"
    assert k_mix_type("token_embd.weight", 2048, "Q4_K", 16) == "Q6_K"  # the tied head
    # rows that are not super-blocks of 256: llama.cpp's fallbacks
    assert k_mix_type("blk.5.attn_q.weight", 64, "Q4_K", 16) == "Q5_0"
    assert k_mix_type("blk.5.attn_q.weight", 64, "Q5_K", 16) == "Q5_1"
    assert k_mix_type("token_embd.weight", 64, "Q4_K", 16) == "Q8_0"


@pytest.mark.parametrize(("weights", "base"), [("q4_k_m", "q4_k"), ("q5_k_m", "q5_k")])
def test_a_tiny256_k_mix_streams_its_k_quants_with_the_logits_of_fp32(
    weights: str, base: str, tmp_path: Path
) -> None:
    from gguf import GGUFReader

    path = write_model(tmp_path / "out", "llama", "tiny256", weights, seed=3)
    kinds = {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    assert kinds["token_embd.weight"] == "Q6_K"
    assert kinds["blk.1.attn_v.weight"] == kinds["blk.1.ffn_down.weight"] == "Q6_K"
    assert kinds["blk.0.attn_v.weight"] == kinds["blk.0.ffn_down.weight"] == base.upper()
    kept = _engine(path, tmp_path)
    plain = Engine.from_pretrained(str(path), cache_bytes=1 << 20, block_size=4,
                                   cache_dir=tmp_path / "cache", weights="fp32")  # fmt: skip
    # layer 1's q/k/v join a Q6_K attn_v to q/k in the base type: split in two layers,
    # q/k and v; with layer 1's ffn_down and the tied head, three Q6_K layers
    assert formats_of(kept.model) == f"{base} 7, q6_k 3"
    assert streamed_bytes(kept.model) < streamed_bytes(plain.model) / 4
    assert getattr(kept.model.get_input_embeddings(), "format", None) == "q6_k"
    ids = kept.tokenizer("hello world, the quick brown fox", return_tensors="pt").input_ids
    with torch.inference_mode():
        got, want = kept.model(ids).logits, plain.model(ids).logits
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
