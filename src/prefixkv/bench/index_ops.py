"""``prefixkv bench index``: prefix-index operations, side by side with peers, in one run.

Subjects: prefixkv's PrefixIndex, the plain-dict ReferenceIndex, SGLang's classic RadixCache
(page size 16 and 1), SGLang's default UnifiedRadixCache with its Rust TreeCore, prefixkv's
SGLang backend (``prefixkv.integrations.sglang``, driven through SGLang's calls like the
SGLang trees) and vLLM's block hashing + lookup (sha256 and xxhash), the peers when
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
markdown table go under ``results/``. The subjects take turns in rounds (see ``_time``), and
the C heap is pre-faulted first (``prefixkv.bench.heap``) so that no timing includes
first-touch page faults.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from array import array
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from prefixkv.bench.heap import prefault_heap
from prefixkv.bench.index_table import markdown_table
from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.stats import percentile
from prefixkv.bench.subjects import Subject, make_subjects

BLOCK = 16
VOCAB = 49152
REPS = {128: 400, 1024: 200, 8192: 100, 32768: 60}
INPUT_FORMS = ("list", "array", "native")
CONVERSATION_FORMS = ("list", "array", "once", "native")

Call = Callable[[], object]
Calls = Mapping[str, Callable[[], Call]]  # subject name -> makes, off the clock, the next call
ROUNDS = 10  # each case's repetitions run in this many rounds over the subjects


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def _time(calls: Calls, reps: int, rounds: int = ROUNDS, warmup: int = 1) -> dict[str, list[float]]:
    """Microseconds per call of each subject, ``reps`` calls each; each call is made (input
    prepared) off the clock by its subject's entry in ``calls``.

    The calls run in ``rounds`` rounds; in each round every subject makes a run of
    consecutive calls, the first ``warmup`` of them untimed (so that each is timed warm, in
    its steady state, not right after another subject's work), in an order that rotates from
    round to round, so that drifts in machine load and the heap's growth fall on all subjects
    alike. Each subject makes ``reps + rounds * warmup`` calls. Garbage collection is off
    while timing, as in timeit.
    """
    names = list(calls)
    out: dict[str, list[float]] = {name: [] for name in names}
    per_round = -(-reps // rounds)
    gc.disable()
    try:
        for round_ in range(rounds):
            count = min(per_round, reps - round_ * per_round)
            turn = round_ % len(names)
            for name in names[turn:] + names[:turn]:
                make, samples = calls[name], out[name]
                for _ in range(warmup):
                    make()()
                for _ in range(count):
                    call = make()
                    start = time.perf_counter_ns()
                    call()
                    samples.append((time.perf_counter_ns() - start) / 1e3)
    finally:
        gc.enable()
    return out


def _always(call: Call) -> Callable[[], Call]:
    return lambda: call


def _inputs(subjects: list[Subject], mode: str, tokens: list[int]) -> dict[str, Any]:
    """``tokens`` as each subject gets it in form ``mode`` (made before the clock): one
    shared object for ``list`` and ``array``, each subject's own for ``native``."""
    if mode == "native":
        return {s.name: s.native(tokens) for s in subjects}
    shared = tokens if mode == "list" else array("q", tokens)
    return {s.name: shared for s in subjects}


def _turn(subject: Subject, tokens: Any) -> None:
    subject.match(tokens)
    subject.insert(tokens)


def _turn_once(subject: Subject, history: list[int]) -> None:
    request = subject.native(history)  # timed: the one conversion a serving engine makes
    _turn(subject, request)


def per_length_cases(
    subjects: list[Subject], length: int, reps: int, seed: int
) -> dict[str, dict[str, list[float]]]:
    """Samples per case and subject: hit, partial hit (half the prompt), miss and insert of a
    fresh prompt in each input form, and pin+unpin, over 64 unrelated background prompts."""
    rng = random.Random(seed)
    background = [_tokens(rng, 256) for _ in range(64)]
    prompt, miss = _tokens(rng, length), _tokens(rng, length)
    half = prompt[: length // 2] + _tokens(rng, length - length // 2)
    for subject in subjects:
        for tokens in [*background, prompt]:
            subject.insert(tokens)
    cases = {}
    for mode in INPUT_FORMS:
        for case, tokens in (("match_hit", prompt), ("match_partial", half), ("match_miss", miss)):
            given = _inputs(subjects, mode, tokens)
            calls = {s.name: _always(partial(s.match, given[s.name])) for s in subjects}
            cases[f"{case}[{mode}]"] = _time(calls, reps)
        fresh = [_inputs(subjects, mode, _tokens(rng, length)) for _ in range(reps + ROUNDS)]
        calls = {
            s.name: iter([partial(s.insert, given[s.name]) for given in fresh]).__next__
            for s in subjects
        }
        cases[f"insert[{mode}]"] = _time(calls, reps)
    pins = {s.name: _always(partial(s.pin_unpin, s.pin(prompt))) for s in subjects if s.can_pin}
    cases["pin_unpin"] = _time(pins, reps)
    return cases


def conversation_case(
    subjects: list[Subject], turns: int, turn_tokens: int, seed: int, form: str
) -> dict[str, list[float]]:
    """Each turn: match the history, then insert it (as an engine does per request).
    ``form``: "list", "array" and "native" hand both calls the turn's request in that form,
    made before the clock starts; "once" converts the list into the subject's own form once
    per turn, on the clock, then matches and inserts it. Every subject runs the same turns on
    its own index, in the rounds of ``_time``."""
    rng = random.Random(seed)
    histories = [_tokens(rng, turn_tokens)]
    for _ in range(turns - 1):
        histories.append(histories[-1] + _tokens(rng, turn_tokens))
    calls = {s.name: map(partial(_prepare_turn, s, form), histories).__next__ for s in subjects}
    return _time(calls, turns, rounds=min(turns, 16), warmup=0)  # every turn is timed


def _prepare_turn(subject: Subject, form: str, history: list[int]) -> Call:
    if form == "once":
        return partial(_turn_once, subject, history)
    return partial(_turn, subject, _inputs([subject], form, history)[subject.name])


def evict_case(subjects: list[Subject], leaves: int, reps: int, seed: int) -> dict[str, Any]:
    """One evict call (one block) with ``leaves`` evictable one-block leaves."""
    rng = random.Random(seed)
    prompts = [[i % VOCAB, i // VOCAB, *_tokens(rng, BLOCK - 2)] for i in range(leaves)]
    evicting = [s for s in subjects if s.can_evict]
    for subject in evicting:
        for tokens in prompts:
            subject.insert(tokens)
    return _time({s.name: _always(partial(s.evict, 1)) for s in evicting}, reps)


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
        cases = per_length_cases(make_subjects(args.peers, BLOCK), length, reps, seed=length)
        rows += [report(case, length, results) for case, results in cases.items()]
    for form in CONVERSATION_FORMS:
        subjects = make_subjects(args.peers, BLOCK)
        conv = conversation_case(subjects, args.turns, args.turn_tokens, seed=7, form=form)
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
        results = evict_case(make_subjects(args.peers, BLOCK), leaves, reps, seed=leaves)
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
        default=["dict", "sglang", "sglang-rust", "prefixkv-sglang", "vllm"],
        choices=["dict", "sglang", "sglang-rust", "prefixkv-sglang", "vllm"],
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
    info["heap_prefaulted"] = prefault_heap()
    print(describe(info))
    print(
        "# heap: "
        + ("1 GiB pre-faulted (glibc)" if info["heap_prefaulted"] else "not pre-faulted")
        + "; times per call in microseconds; (Nx) = that subject's p50 / prefixkv's p50"
    )
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    args.table.parent.mkdir(parents=True, exist_ok=True)
    heap = "; C heap pre-faulted (1 GiB)" if info["heap_prefaulted"] else ""
    args.table.write_text(markdown_table(rows, describe(info) + heap))
    print(f"# wrote {args.out} and {args.table}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
