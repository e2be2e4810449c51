"""Tiny randomly initialised models of each family prefixkv serves, built from transformers'
own config classes over :func:`tests.engine.tiny.tiny_tokenizer`'s vocabulary: width 64,
2 layers, 4 query heads (2 KV heads where the family groups them), context 512."""

from __future__ import annotations

from typing import Any

import torch

from tests.engine.tiny import CHARS, SPECIALS

VOCAB = len(SPECIALS) + len(CHARS)
BOS, EOS, PAD = SPECIALS.index("<s>"), SPECIALS.index("<|im_end|>"), SPECIALS.index("</s>")
LAYERS = 2
INIT = 0.2
"""Weights drawn with this deviation (transformers' default is 0.02): at 0.02 a tiny model's
MLPs and attention barely move its residual stream, so its greedy tokens would hide a wrong
claim (an MLP's halves swapped gave the same tokens); at 0.2 every layer counts."""
_IDS = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD}
LLAMA_LIKE = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "initializer_range": INIT,
    **_IDS,
}


def _config(family: str) -> Any:
    """transformers' own config of a tiny ``family`` model."""
    import transformers as tf

    if family == "gpt2":
        return tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=LAYERS,
            n_head=4,
            n_positions=512,
            initializer_range=INIT,
            **_IDS,
        )
    made: dict[str, Any] = {
        "llama": lambda: tf.LlamaConfig(**LLAMA_LIKE),
        "qwen2": lambda: tf.Qwen2Config(**LLAMA_LIKE),
        "qwen3": lambda: tf.Qwen3Config(**LLAMA_LIKE, head_dim=16),
        "mistral": lambda: tf.MistralConfig(**LLAMA_LIKE, sliding_window=None),
        "phi3": lambda: tf.Phi3Config(**LLAMA_LIKE),
    }
    return made[family]()


def tiny_model(family: str, seed: int = 0) -> Any:
    """A tiny ``family`` causal LM in eval mode, weights drawn with ``seed``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family)).eval()
    model.generation_config.pad_token_id = PAD
    return model
