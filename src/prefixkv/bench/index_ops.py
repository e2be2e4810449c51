"""``prefixkv bench index``: prefix-index operations, side by side with peers, in one run.

Subjects: prefixkv's PrefixIndex, the plain-dict ReferenceIndex, SGLang's classic RadixCache
(page size 16 and 1) and vLLM's block hashing + lookup (sha256 and xxhash), the peers when
importable (``prefixkv.bench.peers``). Every subject gets the same input object, in one of
three forms, made before the clock starts:

- ``[list]``: a Python list of token ids (what a tokenizer returns); each call converts it.
- ``[array]``: an ``array('q')``, the form SGLang's scheduler keeps a request in; SGLang takes
  it as it is, prefixkv converts it inside the call, vLLM hashes it inside the call.
- ``[native]``: the form each system keeps a request in: prefixkv its canonical
  ``TokenBytes``, SGLang ``array('q')``, vLLM the request's block hashes (computed once on
  arrival, so its native match is the lookup alone).

The deep conversation also runs in a fourth form, ``[once]``: each turn converts its request
into the subject's own form once, on the clock, then matches and inserts it. Each case prints
one line: p50/p99 per subject and its p50 as a multiple of prefixkv's; the JSON rows and a
markdown table go under ``results/``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from array import array
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from prefixkv.bench.index_table import markdown_table
from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.stats import percentile
from prefixkv.bench.subjects import Subject, make_subjects

BLOCK = 16
VOCAB = 49152
REPS = {128: 400, 1024: 200, 8192: 60, 32768: 25}


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def _time(call: Callable[[], object], reps: int) -> list[float]:
    """Microseconds per call; garbage collection off while timing, as in timeit."""
    out = []
    gc.disable()
    try:
        for _ in range(reps):
            start = time.perf_counter_ns()
            call()
            out.append((time.perf_counter_ns() - start) / 1e3)
    finally:
        gc.enable()
    return out


def _insert_next(subject: Subject, prompts: Iterator[Any]) -> None:
    subject.insert(next(prompts))


def _turn(subject: Subject, tokens: Any) -> None:
    subject.match(tokens)
    subject.insert(tokens)


def _turn_once(subject: Subject, history: list[int]) -> None:
    request = subject.native(history)  # timed: the one conversion a serving engine makes
    _turn(subject, request)


def _form(subject: Subject, mode: str) -> Callable[[list[int]], Any]:
    """How a prompt is handed to ``subject`` in form ``mode`` (applied before the clock)."""
    if mode == "list":
        return lambda tokens: tokens
    if mode == "array":
        return partial(array, "q")
    return subject.native


INPUT_FORMS = ("list", "array", "native")
CONVERSATION_FORMS = ("list", "array", "once", "native")


def per_length_cases(subject: Subject, length: int, reps: int, seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    for _ in range(64):  # unrelated background prompts
        subject.insert(_tokens(rng, 256))
    prompt = _tokens(rng, length)
    subject.insert(prompt)
    half = prompt[: length // 2] + _tokens(rng, length - length // 2)
    miss = _tokens(rng, length)
    out = {}
    for mode in INPUT_FORMS:
        form = _form(subject, mode)
        hit, part, other = form(prompt), form(half), form(miss)
        out[f"match_hit[{mode}]"] = _time(partial(subject.match, hit), reps)
        out[f"match_partial[{mode}]"] = _time(partial(subject.match, part), reps)
        out[f"match_miss[{mode}]"] = _time(partial(subject.match, other), reps)
        fresh = iter([form(_tokens(rng, length)) for _ in range(reps)])
        out[f"insert[{mode}]"] = _time(partial(_insert_next, subject, fresh), reps)
    if subject.can_pin:
        handle = subject.pin(prompt)
        out["pin_unpin"] = _time(lambda: subject.pin_unpin(handle), reps)
    return out


def conversation_case(
    subject: Subject, turns: int, turn_tokens: int, seed: int, form: str
) -> list[float]:
    """Each turn: match the history, then insert it (as an engine does per request).
    ``form``: "list", "array" and "native" hand both calls the turn's request in that form,
    made before the clock starts; "once" converts the list into the subject's own form once
    per turn, on the clock, then matches and inserts it."""
    rng = random.Random(seed)
    history: list[int] = []
    out = []
    for _ in range(turns):
        history = history + _tokens(rng, turn_tokens)
        if form == "once":
            call = partial(_turn_once, subject, history)
        else:
            call = partial(_turn, subject, _form(subject, form)(history))
        out += _time(call, 1)
    return out


def evict_case(subject: Subject, leaves: int, reps: int, seed: int) -> list[float]:
    """One evict call (one block) with ``leaves`` evictable one-block leaves."""
    rng = random.Random(seed)
    for i in range(leaves):
        subject.insert([i % VOCAB, i // VOCAB, *_tokens(rng, BLOCK - 2)])
    return _time(lambda: subject.evict(1), reps)


def report(case: str, size: int, results: dict[str, list[float]]) -> dict[str, Any]:
    base = percentile(results["prefixkv"], 50)
    parts: list[str] = []
    row: dict[str, Any] = {"case": case, "size": size, "results": {}}
    for name, samples in results.items():
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        row["results"][name] = {
            "p50_us": p50,
            "p99_us": p99,
            "n": len(samples),
            "vs_prefixkv": p50 / base,
        }
        ratio = "" if name == "prefixkv" else f" ({p50 / base:.1f}x)"
        parts.append(f"{name} p50={p50:,.1f}us p99={p99:,.1f}us{ratio}")
    print(f"index {case:<14} {size:>7,}  " + " | ".join(parts), flush=True)
    return row


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for length in args.lengths:
        reps = max(5, int(REPS.get(length, 50) * args.scale))
        per_subject = {
            s.name: per_length_cases(s, length, reps, seed=length)
            for s in make_subjects(args.peers, BLOCK)
        }
        for case in per_subject["prefixkv"]:
            results = {name: cases[case] for name, cases in per_subject.items() if case in cases}
            rows.append(report(case, length, results))
    for form in CONVERSATION_FORMS:
        conv = {
            s.name: conversation_case(s, args.turns, args.turn_tokens, seed=7, form=form)
            for s in make_subjects(args.peers, BLOCK)
        }
        rows.append(report(f"conversation[{form}]", args.turns * args.turn_tokens, conv))
        totals = {name: sum(samples) / 1e3 for name, samples in conv.items()}
        print(
            f"index conversation[{form}] total "
            + " | ".join(
                f"{n}={ms:,.1f}ms ({ms / totals['prefixkv']:.1f}x)" for n, ms in totals.items()
            )
        )
        rows[-1]["total_ms"] = totals
    for leaves in args.leaves:
        reps = max(3, int(20 * args.scale))
        results = {
            s.name: evict_case(s, leaves, reps, seed=leaves)
            for s in make_subjects(args.peers, BLOCK)
            if s.can_evict
        }
        rows.append(report("evict_1_call", leaves, results))
    return rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prefixkv bench index", description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 1024, 8192, 32768])
    parser.add_argument("--turns", type=int, default=128, help="turns of the deep conversation")
    parser.add_argument("--turn-tokens", type=int, default=256, help="tokens appended per turn")
    parser.add_argument("--leaves", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply repetitions by this")
    parser.add_argument(
        "--peers",
        nargs="*",
        default=["dict", "sglang", "vllm"],
        choices=["dict", "sglang", "vllm"],
        help="baselines to run beside prefixkv (skipped with a note when not importable)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/index_ops.json"))
    parser.add_argument(
        "--table", type=Path, default=Path("results/index_table.md"), help="markdown table"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    info = machine_info()
    print(describe(info))
    print("# times per call in microseconds; (Nx) = that subject's p50 / prefixkv's p50")
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(markdown_table(rows, describe(info)))
    print(f"# wrote {args.out} and {args.table}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
