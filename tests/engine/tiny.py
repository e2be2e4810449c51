"""A tiny randomly initialised Llama with a character-level tokenizer, built offline."""

from __future__ import annotations

import string
from typing import Any

import torch

CHARS = string.ascii_letters + string.digits + " .,;:!?'\"-()\n<>|_"
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # One character per piece: control tokens are recognised only as added special tokens,
    # so ``split_special_tokens=True`` turns their text into plain characters, as with BPE.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="</s>",
        chat_template=TEMPLATE,
    )


def tiny_llama(seed: int = 0, layers: int = 2) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(SPECIALS) + len(CHARS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=SPECIALS.index("<|im_end|>"),
        bos_token_id=SPECIALS.index("<s>"),
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = SPECIALS.index("</s>")
    return model
