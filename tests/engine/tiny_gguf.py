"""Tiny GGUF files written with the ``gguf`` package: a 2-layer Llama or Qwen2 over a
byte-level BPE tokenizer like SmolLM2's, its matrices in any GGML type gguf can quantize to."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# blk.N.<part>.weight of every layer's matrices, each Linear of the HF model but lm_head
MATRIX_PARTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
LAYERS = 2


def tiny_bpe_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["hello world", "the quick brown fox jumps over the lazy dog", "user assistant"]
    tok.train_from_iterator(corpus * 5, trainer)
    return tok


def _add_metadata(w: Any, tokens: list[str], merges: list[str], dims: Mapping[str, int]) -> None:
    w.add_name("tiny")
    w.add_block_count(LAYERS)
    w.add_context_length(dims["context"])
    w.add_embedding_length(dims["hidden"])
    w.add_feed_forward_length(dims["inter"])
    w.add_head_count(dims["heads"])
    w.add_head_count_kv(dims["kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(dims["hidden"] // dims["heads"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(TEMPLATE)


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    matrix_type: str = "Q8_0",
    types: Mapping[str, str] | None = None,
    untied: bool = False,
    context: int = 256,
    hidden: int = 64,
) -> None:
    """Writes a 2-layer ``arch`` ("llama" or "qwen2", which adds q/k/v biases) model to ``path``.

    Every matrix is stored as GGML type ``matrix_type`` unless ``types`` names another for
    its tensor name (e.g. ``{"blk.0.ffn_up.weight": "Q5_0"}``); 1-D tensors are F32. With
    ``untied`` the file has its own ``output.weight`` (else lm_head is the token embedding);
    ``context``: its context length; ``hidden``: its width (the MLP's is twice that; a
    K-quant, Q4_K, Q5_K or Q6_K, written with prefixkv.bench.model_kquants since gguf cannot,
    needs a multiple of 256)."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    from prefixkv.bench.model_kquants import K_TYPES, quantize_k

    model = json.loads(tiny_bpe_tokenizer().to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    dims = {"hidden": hidden, "heads": 4, "kv_heads": 2, "inter": 2 * hidden, "context": context}
    inter, kv_dim = dims["inter"], hidden // 2  # kv_heads * head_dim
    w = GGUFWriter(str(path), arch)
    _add_metadata(w, tokens, merges, dims)
    rng = np.random.default_rng(0)

    def add(name: str, shape: tuple[int, ...]) -> None:
        a = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        qtype = GGMLQuantizationType[(types or {}).get(name, matrix_type)]
        if len(shape) == 1 or qtype == GGMLQuantizationType.F32:
            w.add_tensor(name, a)
        elif qtype.name in K_TYPES:
            w.add_tensor(name, quantize_k(a, qtype.name), raw_dtype=qtype)
        else:
            w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)

    add("token_embd.weight", (len(tokens), hidden))
    add("output_norm.weight", (hidden,))
    if untied:
        add("output.weight", (len(tokens), hidden))
    shapes = {"attn_q": (hidden, hidden), "attn_k": (kv_dim, hidden), "attn_v": (kv_dim, hidden)}
    shapes |= {"attn_output": (hidden, hidden), "ffn_down": (hidden, inter)}
    shapes |= {"ffn_gate": (inter, hidden), "ffn_up": (inter, hidden)}
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", (hidden,))
        add(f"blk.{i}.ffn_norm.weight", (hidden,))
        for part in MATRIX_PARTS:
            add(f"blk.{i}.{part}.weight", shapes[part])
            if arch == "qwen2" and part in ("attn_q", "attn_k", "attn_v"):
                add(f"blk.{i}.{part}.bias", (shapes[part][0],))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
