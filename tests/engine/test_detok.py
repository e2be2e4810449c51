"""Streaming detokenization: the streamed text equals a full decoding (multi-byte text split
mid-character, random ids, special tokens skipped), stop strings cut exactly, and the work
per token stays bounded as the output grows.

Tokenizers (:mod:`tests.engine.detok_tokenizers`, built offline): a byte-level BPE (as
SmolLM2's), a SentencePiece-style BPE with byte fallback (Metaspace, as Llama's), the tests'
character tokenizer; SmolLM2's own in the ``smollm2`` tests. Each goes through both
decoders: DecodeStream (``FastDecoder``) and the Python one over ``decode``
(``WindowDecoder``, what a tokenizer without a fast backend gets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models

from prefixkv.engine.detok import (
    INCOMPLETE,
    MAX_RUN,
    FastDecoder,
    TextStream,
    WindowDecoder,
    incremental_decoder,
)

from .detok_tokenizers import TEXTS, TOKENIZERS, byte_level, characters, sentencepiece_like


class SlowView:
    """A tokenizer without a fast backend (what gets the WindowDecoder): ``decode`` only;
    counts the ids it is given, per call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def decode(
        self,
        ids: list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> str:
        self.calls.append(len(ids))
        if isinstance(self.inner, Tokenizer):  # the library's own: it never cleans up
            return str(self.inner.decode(ids, skip_special_tokens=skip_special_tokens))
        cleanup = {"clean_up_tokenization_spaces": clean_up_tokenization_spaces}
        return str(self.inner.decode(ids, skip_special_tokens=skip_special_tokens, **cleanup))


DECODERS: dict[str, Callable[[Any], Any]] = {"fast": lambda t: t, "window": SlowView}


def stream(tokenizer: Any, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[str, TextStream]:
    """All the deltas of ``ids`` pushed one at a time (until a stop), then ``finish()``."""
    text = TextStream(tokenizer, stop)
    deltas = []
    for token in ids:
        deltas.append(text.push(token))
        if text.stopped:
            break
    deltas.append(text.finish())
    assert "".join(deltas) == text.text
    return "".join(deltas), text


def settled(tokenizer: Any, ids: list[int]) -> str:
    """The old definition of the streamed text: the full decoding of the longest prefix of
    ``ids`` that does not end in an incomplete character."""
    for end in range(len(ids), 0, -1):
        text = str(tokenizer.decode(ids[:end], skip_special_tokens=True))
        if not text.endswith(INCOMPLETE):
            return text
    return ""


def splits_a_character(tokenizer: Any, ids: list[int]) -> bool:
    return any(
        str(tokenizer.decode(ids[:end], skip_special_tokens=True)).endswith(INCOMPLETE)
        for end in range(1, len(ids))
    )


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", TOKENIZERS)
def test_the_right_decoder_is_chosen(name: str, decoder: str) -> None:
    chosen = incremental_decoder(DECODERS[decoder](TOKENIZERS[name]()))
    assert isinstance(chosen, FastDecoder if decoder == "fast" else WindowDecoder)


@pytest.mark.parametrize("decoder", DECODERS)
def test_spaces_are_never_cleaned_up(decoder: str) -> None:
    """A tokenizer set to clean up spaces (``"a ,"`` -> ``"a,"``) streams them as they are,
    whichever decoder: a cleanup could remove a space already sent. Every character comes
    out, the last one included (a cleanup that shortened the text hid it before)."""
    tokenizer = byte_level()
    tokenizer.clean_up_tokenization_spaces = True
    try:
        text = "Hello , world . Yes !"
        ids = tokenizer.encode(text, add_special_tokens=False)
        # transformers 5.6 (the lowest prefixkv admits) cleans this text up in decode
        # ("Hello, world. Yes!"); 5.23 ignores the setting for BPE. Streamed, never cleaned up.
        assert stream(DECODERS[decoder](tokenizer), ids)[0] == text
    finally:
        tokenizer.clean_up_tokenization_spaces = False


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("name", ["byte-level", "sentencepiece"])
def test_multibyte_text_streams_as_its_full_decoding(name: str, text: str, decoder: str) -> None:
    tokenizer = TOKENIZERS[name]()
    ids = tokenizer.encode(TEXTS[text], add_special_tokens=False)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assert stream(DECODERS[decoder](tokenizer), ids)[0] == full
    assert full.strip() == TEXTS[text].strip()  # the tokenizers round-trip these texts


@pytest.mark.parametrize("name", ["byte-level", "sentencepiece"])
def test_the_texts_split_characters_between_tokens(name: str) -> None:
    """What the test above relies on: tokens that end inside a character."""
    tokenizer = TOKENIZERS[name]()
    for text in ("cjk", "emoji", "rare"):
        assert splits_a_character(tokenizer, tokenizer.encode(TEXTS[text])), text


def random_ids(tokenizer: Any) -> st.SearchStrategy[list[int]]:
    """Any ids, at most ``MAX_RUN`` (so no run is given up on). For a tokenizer with byte
    tokens (<0xNN>), those come in groups that form characters: ByteFallback rewrites earlier
    valid bytes once an invalid one follows (see the test after next)."""
    byte_ids = {i for t, i in tokenizer.get_vocab().items() if t.startswith("<0x")}
    if not byte_ids:
        return st.lists(st.integers(0, len(tokenizer) - 1), max_size=MAX_RUN)
    others = [i for i in range(len(tokenizer)) if i not in byte_ids]
    piece = st.one_of(
        st.sampled_from(others).map(lambda i: [i]),
        # no lone surrogates: not text a tokenizer (Rust, UTF-8) can take
        st.characters(exclude_categories=("Cs",)).map(
            lambda c: tokenizer.encode(c, add_special_tokens=False)
        ),
    )
    return st.lists(piece, max_size=MAX_RUN // 5).map(lambda p: [i for ids in p for i in ids])


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_ids_stream_as_the_settled_decoding(name: str, decoder: str, data: Any) -> None:
    """Special tokens included, bytes that never form characters too (byte-level)."""
    tokenizer = TOKENIZERS[name]()
    ids = data.draw(random_ids(tokenizer))
    text = stream(DECODERS[decoder](tokenizer), ids)[0]
    assert text == settled(tokenizer, ids)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assert text == full or full.endswith(INCOMPLETE)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_invalid_byte_tokens_never_fail_a_stream(data: Any) -> None:
    """Byte tokens in any order through ByteFallback: both decoders go on, and agree."""
    tokenizer = sentencepiece_like()
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=MAX_RUN))
    assert stream(tokenizer, ids)[0] == stream(SlowView(tokenizer), ids)[0]


def test_text_already_sent_stays() -> None:
    """<0x00> is text on its own, U+FFFD in a full decoding once <0x80> follows it."""
    tokenizer = sentencepiece_like()
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<0x00>", "<0x80>", "!")]
    assert tokenizer.decode(ids) == "\ufffd\ufffd!"
    for decoder in DECODERS.values():
        assert stream(decoder(tokenizer), ids)[0] == "\x00\ufffd!"


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", TOKENIZERS)
def test_special_tokens_are_skipped(name: str, decoder: str) -> None:
    tokenizer = TOKENIZERS[name]()
    ids = tokenizer.encode("Hello 世界 again", add_special_tokens=False)
    specials = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens]
    assert specials
    mixed = [specials[0], *ids[:2], *specials, *ids[2:], specials[-1]]
    assert stream(DECODERS[decoder](tokenizer), mixed)[0] == tokenizer.decode(
        ids, skip_special_tokens=True
    )


def test_a_run_without_text_is_given_up_on() -> None:
    """An incomplete character, then more than MAX_RUN special tokens: the run is dropped
    (with its incomplete bytes), later text streams as usual, and no step decoded more than
    about twice MAX_RUN ids."""
    tokenizer = byte_level()
    head = tokenizer.encode("ok ", add_special_tokens=False)
    lead = next(i for i in range(len(tokenizer)) if tokenizer.decode([i]) == INCOMPLETE)
    special = tokenizer.convert_tokens_to_ids("<|im_start|>")
    tail = tokenizer.encode("and on", add_special_tokens=False)
    for decoder in DECODERS.values():
        view = decoder(tokenizer)
        text = stream(view, [*head, lead, *[special] * (3 * MAX_RUN), *tail])[0]
        assert text == "ok and on"
        if isinstance(view, SlowView):
            assert max(view.calls) <= 2 * MAX_RUN + 1


TEXT_ALPHABET = st.sampled_from([*"ab cd.,!\n", "世", "界", "é", "🎉", "e\u0301"])


@pytest.mark.parametrize("decoder", DECODERS)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_stop_strings_cut_before_the_earliest(decoder: str, data: Any) -> None:
    """Stops taken from the text (so across token boundaries, inside multi-byte pieces) and
    one maybe absent: the stream ends with the first text that holds one, cut before the
    earliest stop in it; nothing after the cut is ever sent."""
    tokenizer = byte_level()
    text = "".join(data.draw(st.lists(TEXT_ALPHABET, min_size=1, max_size=40)))
    stops = []
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, len(text) - 1))
        stops.append(text[start : start + data.draw(st.integers(1, 6))])
    stops.append("".join(data.draw(st.lists(TEXT_ALPHABET, min_size=1, max_size=4))))
    ids = tokenizer.encode(text, add_special_tokens=False)
    expected, stopped = tokenizer.decode(ids), False
    for end in range(1, len(ids) + 1):  # the first text that holds a stop, cut at the earliest
        found = [at for at in (settled(tokenizer, ids[:end]).find(s) for s in stops) if at != -1]
        if found:
            expected, stopped = settled(tokenizer, ids[:end])[: min(found)], True
            break
    streamed, state = stream(DECODERS[decoder](tokenizer), ids, tuple(stops))
    assert streamed == expected and state.stopped == stopped


def test_text_a_stop_may_claim_is_held_back() -> None:
    """Pushed one character at a time: each delta stops short of a possible stop's start."""
    tokenizer = characters()
    text = TextStream(tokenizer, ("STOP", "ST!"))
    deltas = [text.push(tokenizer.convert_tokens_to_ids(c)) for c in "one STO"]
    assert "".join(deltas) == "one " and not text.stopped  # "STO" may become "STOP"
    assert text.push(tokenizer.convert_tokens_to_ids("P")) == "" and text.stopped
    assert text.finish() == "" and text.text == "one "
    later = TextStream(tokenizer, ("STOP",))
    assert [later.push(tokenizer.convert_tokens_to_ids(c)) for c in "STxy"] == ["", "", "", "S"]
    assert later.finish() == "Txy"  # the last len("STOP") - 1 characters were held


class CountingDecoder:
    """A ``tokenizers`` decoder that counts the tokens it is asked to decode (what
    DecodeStream's work per step is), and joins them as Fuse does."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def decode_chain(self, tokens: list[str]) -> list[str]:
        self.calls.append(len(tokens))
        return ["".join(tokens)]


def counting_tokenizer() -> tuple[Tokenizer, CountingDecoder]:
    counter = CountingDecoder()
    core = Tokenizer(models.WordLevel({c: i for i, c in enumerate("abc de")}, unk_token="a"))
    core.decoder = decoders.Decoder.custom(counter)
    return core, counter


def outputs(n: int) -> Iterator[int]:
    return (i % 6 for i in range(n))


@pytest.mark.parametrize("n", [100, 2000])
def test_the_work_per_token_does_not_grow_with_the_output(n: int) -> None:
    """Ids decoded per pushed token, fast path (counted inside DecodeStream's decodes) and
    window path (counted at ``decode``): a few, whether the output is 100 or 2,000 tokens
    long. Decoding the whole output at every token would pass ~n/2 per token."""
    core, counter = counting_tokenizer()
    fast = TextStream(core, ("zz",))
    view = SlowView(counting_tokenizer()[0])
    window = TextStream(view, ("zz",))
    for token in outputs(n):
        fast.push(token)
        window.push(token)
    assert len(fast.text) == len(window.text) == n
    assert max(counter.calls) <= 4 and sum(counter.calls) <= 4 * n
    assert max(view.calls) <= 4 and sum(view.calls) <= 4 * n


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    """SmolLM2's own tokenizer, loaded from its GGUF by the engine's loader."""
    from prefixkv.engine.loader import load_model

    return load_model("smollm2").tokenizer


@pytest.mark.smollm2
def test_smollm2_gets_the_fast_decoder(smollm2_tokenizer: Any) -> None:
    assert isinstance(incremental_decoder(smollm2_tokenizer), FastDecoder)
    assert not smollm2_tokenizer.clean_up_tokenization_spaces


@pytest.mark.smollm2
@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_multibyte_text(smollm2_tokenizer: Any, text: str) -> None:
    tokenizer = smollm2_tokenizer
    ids = tokenizer.encode(TEXTS[text], add_special_tokens=False)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assert full == TEXTS[text] and splits_a_character(tokenizer, ids)
    for decoder in DECODERS.values():
        assert stream(decoder(tokenizer), ids)[0] == full


@pytest.mark.smollm2
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_smollm2_random_ids(smollm2_tokenizer: Any, data: Any) -> None:
    tokenizer = smollm2_tokenizer
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=MAX_RUN))
    assert stream(tokenizer, ids)[0] == settled(tokenizer, ids)
