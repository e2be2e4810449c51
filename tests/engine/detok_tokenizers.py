"""Tokenizers for the detokenization tests, built offline in a second: a byte-level BPE
(GPT-2 and SmolLM2 style), a SentencePiece-style BPE with byte fallback (Llama style), and the
tests' character tokenizer; and texts whose characters those split between tokens."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .tiny import tiny_tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, again and again!",
    "naïve café, déjà vu; 世界你好 and こんにちは, emoji 🎉🎉 ok",  # merges inside characters
]
TEXTS = {
    "cjk": "今日は良い天気ですね。世界你好\uff01",
    "emoji": "ok 🎉🎉 👩\u200d👩\u200d👧 🏳️\u200d🌈 done",
    "combining": "e\u0301 a\u0308 n\u0303 Z\u0335\u0321\u0327 ✓",
    "mixed": " Hello, 世界! naïve café — 𝄞 ÅÄÖ don't . , ?  two  spaces\nnew line",
    "rare": "𓀀𓀁 ﷺ ꧁꧂ \U0001f9ec\U0001fae0",  # characters no merge covers: single bytes
}


def _trained_bpe(pre: Any, specials: list[str], **options: Any) -> Tokenizer:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False, **options
    )
    core.train_from_iterator(CORPUS * 3, trainer)
    return core


@cache
def byte_level() -> Any:
    """GPT-2 / SmolLM2 style: every byte a symbol, merges over bytes."""
    from transformers import PreTrainedTokenizerFast

    core = _trained_bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>")


@cache
def sentencepiece_like() -> Any:
    """Llama style: ``▁`` for spaces, characters outside the vocabulary as <0xNN> byte
    tokens, the first leading space stripped when decoding."""
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    trained = _trained_bpe(pre_tokenizers.Metaspace(), specials, limit_alphabet=60)
    vocab = trained.get_vocab()
    merges = [tuple(m) for m in json.loads(trained.to_str())["model"]["merges"]]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    core = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    core.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>")


@cache
def characters() -> Any:
    return tiny_tokenizer()


TOKENIZERS: dict[str, Callable[[], Any]] = {
    "byte-level": byte_level,
    "sentencepiece": sentencepiece_like,
    "characters": characters,
}
