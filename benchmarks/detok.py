"""Streaming detokenization, time per token: prefixkv's TextStream against the one it
replaced (the whole output decoded again at every token), on SmolLM2's tokenizer.

For each output length it pushes that many tokens of a mixed English/CJK/emoji text, one at
a time (with a stop string, as a request with ``stop`` has), and prints the mean time per
token over the whole output and over its last 100 tokens (best of ``--repeat`` runs).

    PYTHONPATH=src python benchmarks/detok.py --lengths 100 2000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from prefixkv.engine.detok import TextStream
from prefixkv.engine.loader import load_model

PARAGRAPH = (
    "The cache keeps the key and value tensors of every prompt prefix it has seen, so a "
    "request that starts like an earlier one skips most of its prefill. 世界你好, こんにちは! "
    "Numbers: 3.14159, 2,718; emoji 🎉 and accents: naïve café.\n"
)
STOP = ("\n\nUser:",)


class QuadraticTextStream:
    """The detokenizer before this change, verbatim but for its name: ``decode`` of all ids
    at every token; a stop string is searched from just before the text already sent."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._emitted = 0
        self.text = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        self.text = text
        for stop in self._stop:
            cut = text.find(stop, max(0, self._emitted - len(stop)))
            if cut != -1:
                self.stopped = True
                self.text = text[:cut]
                return self._emit(len(self.text))
        return self._emit(max(self._emitted, len(text) - self._hold))

    def _emit(self, upto: int) -> str:
        delta = self.text[self._emitted : upto]
        self._emitted = max(self._emitted, upto)
        return delta


def timed(kind: Any, tokenizer: Any, ids: list[int], tail: int) -> tuple[float, float, str]:
    """(seconds per token over all ``ids``, over the last ``tail``, the text)."""
    stream = kind(tokenizer, STOP)
    marks = [time.perf_counter()]
    for token in ids:
        stream.push(token)
        marks.append(time.perf_counter())
    tail = min(tail, len(ids))
    return (
        (marks[-1] - marks[0]) / len(ids),
        (marks[-1] - marks[-1 - tail]) / tail,
        stream.text,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    tokenizer = load_model("smollm2").tokenizer
    text = PARAGRAPH
    while len(tokenizer.encode(text, add_special_tokens=False)) < max(args.lengths):
        text += PARAGRAPH
    all_ids = tokenizer.encode(text, add_special_tokens=False)
    print("tokens  detokenizer    us/token (whole output)  us/token (last 100)")
    for length in args.lengths:
        ids = all_ids[:length]
        texts = set()
        for name, kind in (("before", QuadraticTextStream), ("now", TextStream)):
            runs = [timed(kind, tokenizer, ids, 100) for _ in range(args.repeat)]
            mean, tail = min(r[0] for r in runs), min(r[1] for r in runs)
            texts.add(runs[0][2])
            print(f"{length:6d}  {name:12s}  {mean * 1e6:23.1f}  {tail * 1e6:19.1f}")
        if len(texts) != 1:
            raise SystemExit(f"the two detokenizers disagree at {length} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
