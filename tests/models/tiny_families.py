"""What the families' tiny models share: :func:`tests.engine.tiny.tiny_tokenizer`'s
vocabulary and special ids, and Llama-style sizes (width 64, 2 layers, 4 query and 2 KV
heads, context 512) for a family's own config class; each family's test module builds its
config (its ``case`` fixture)."""

from __future__ import annotations

from typing import Any

import torch

from prefixkv.models import family_of
from tests.engine.tiny import CHARS, SPECIALS

VOCAB = len(SPECIALS) + len(CHARS)
BOS, EOS, PAD = SPECIALS.index("<s>"), SPECIALS.index("<|im_end|>"), SPECIALS.index("</s>")
LAYERS = 2
INIT = 0.2
"""Weights drawn with this deviation (transformers' default is 0.02): at 0.02 a tiny model's
MLPs and attention barely move its residual stream, so its greedy tokens would hide a wrong
claim (an MLP's halves swapped gave the same tokens); at 0.2 every layer counts."""
IDS = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD}
"""The tokenizer's special ids."""
LLAMA_LIKE = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "initializer_range": INIT,
    **IDS,
}
"""A Llama-style config's sizes and ids, for any family's config class that takes them."""
UNTIED = {"tie_word_embeddings": False}
"""For Gemma's tiny models: Gemma scales its embeddings by ``sqrt(hidden_size)``, so with
tied embeddings a tiny model's residual stream is its input token's embedding and it repeats
that token whatever the layers do (which would hide a wrong attention from greedy tokens)."""
WINDOW = 8
"""The sliding window of the tiny sliding-window models: the shared prompts
(:data:`tests.models.checks.PROMPTS`, up to 31 tokens, 22 of them shared, prefilled in
chunks of up to 12 by the batch test) and their 8 decoded tokens run well past it, so a
cached prefix is longer than the window and decoding reads only its tail."""


def tiny_model(config: Any, seed: int = 0) -> Any:
    """A causal LM of transformers' own class for ``config``, in eval mode, weights drawn with
    ``seed``; generation pads with the tokenizer's pad id."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, **family_of(config).model_kwargs()).eval()
    model.generation_config.pad_token_id = PAD
    return model
