"""What a grammar mask (structured outputs, llguidance) costs a decode step on SmolLM2.

``batch``: the batch runner in-process (no HTTP), ``--sequences`` requests of one prompt at
once, sampled (temperature 0.8, a seed each), ``--tokens`` tokens each, every request either
masked by a JSON schema (an array of at least 100 objects, so no reply completes before
``--tokens``) or unmasked. Rounds alternate masked and unmasked (the host's load hits both
alike); each prints the median of its decode-only steps and of its sequences'
``Decoding.accept`` calls inside the runner (timed by a wrapper: the mask's cost on the
batch runner, which a busy host's noise in the forward pass does not hide).

``accept``: one ``Decoding.accept`` (processors, sampler, text) on SmolLM2-sized random
logits with SmolLM2's tokenizer, with and without the mask (median of ``--calls``, settings
interleaved): the mask's own cost, without the model's noise.

``libraries``: llguidance against xgrammar (each where importable; xgrammar is no
dependency), SmolLM2's tokenizer, one JSON schema: per token of a fixed valid reply, the
time to fill the vocabulary's bitmask and to advance the matcher (applying the bitmask to
the logits is ours, the same for both). Medians over ``--rounds`` passes.

    PYTHONPATH=src python benchmarks/grammar_overhead.py batch --sequences 4 --rounds 3
    PYTHONPATH=src python benchmarks/grammar_overhead.py accept
    PYTHONPATH=src python benchmarks/grammar_overhead.py libraries
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

SHIP = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "crew": {"type": "integer"},
        "ports": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "crew", "ports"],
}
SCHEMA = json.dumps({"type": "array", "items": SHIP, "minItems": 100})
PROMPT = "List the ships in the harbour as JSON, with their names, crews and ports of call."


def _params(masked: bool, seed: int, tokens: int) -> Any:
    from prefixkv.engine.request import GrammarSpec, SamplingParams

    grammar = GrammarSpec("json_schema", SCHEMA, "schema") if masked else None
    return SamplingParams(
        max_tokens=tokens, temperature=0.8, seed=seed, ignore_eos=True, grammar=grammar
    )


def batch(sequences: int, tokens: int, rounds: int) -> None:
    from prefixkv.engine.batch.records import BatchLimits
    from prefixkv.engine.batch.runner import BatchRunner
    from prefixkv.engine.decoding import Decoding
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.sinks import Collect

    torch.set_num_threads(2)
    engine = Engine.from_pretrained("smollm2")
    prompt = [{"role": "user", "content": PROMPT}]
    steps: dict[str, list[float]] = {"unmasked": [], "masked": []}
    accepts: dict[str, list[float]] = {"unmasked": [], "masked": []}
    original = Decoding.accept

    def timed(self: Any, logits: torch.Tensor, sink: Any) -> None:
        begun = time.perf_counter()
        original(self, logits, sink)
        accepts["masked" if self.grammar is not None else "unmasked"].append(
            time.perf_counter() - begun
        )

    Decoding.accept = timed  # type: ignore[method-assign]
    for round_ in range(rounds):
        for name in steps:
            runner = BatchRunner(engine, BatchLimits())
            for i in range(sequences):
                params = _params(name == "masked", round_ * 100 + i, tokens)
                runner.submit(engine.request(prompt, params, namespace=object()), Collect())
            times = []
            while runner.num_running or runner.num_waiting:
                report = runner.step()
                if report is not None and report.tokens == report.sequences == sequences:
                    times.append(report.seconds)
            steps[name].append(statistics.median(times))
            print(f"round {round_} {name:9s} {statistics.median(times) * 1e3:7.2f} ms/step")
    unmasked, masked = (statistics.median(steps[n]) for n in ("unmasked", "masked"))
    free, held = (statistics.median(accepts[n]) for n in ("unmasked", "masked"))
    print(
        f"{sequences} sequences: steps unmasked {unmasked * 1e3:.2f} ms, masked "
        f"{masked * 1e3:.2f} ms (medians of rounds); Decoding.accept in the runner: unmasked "
        f"{free * 1e6:.1f} us, masked {held * 1e6:.1f} us per token (medians of "
        f"{len(accepts['unmasked'])} and {len(accepts['masked'])}): the mask adds "
        f"{(held - free) * 1e6:.1f} us per masked token, {(held - free) / unmasked * 100:.2f}% "
        "of an unmasked step"
    )


def accept(calls: int, rounds: int) -> None:
    from prefixkv.engine.decoding import Decoding
    from prefixkv.engine.loader import load_model
    from prefixkv.engine.request import Request
    from prefixkv.engine.sinks import Collect
    from prefixkv.tokens import as_token_bytes

    torch.set_num_threads(1)
    tokenizer = load_model("smollm2").tokenizer
    prompt = as_token_bytes(tokenizer(PROMPT)["input_ids"])
    torch.manual_seed(0)
    logits = [torch.randn(49152) * 4 for _ in range(calls)]
    times: dict[str, list[float]] = {"unmasked": [], "masked": []}
    for round_ in range(rounds):
        for name, taken in times.items():
            params = _params(name == "masked", round_, calls + 1)
            decoding = Decoding(Request(prompt, params), tokenizer, frozenset({2}))
            sink = Collect()
            for row in logits:
                begun = time.perf_counter()
                decoding.accept(row, sink)
                taken.append(time.perf_counter() - begun)
    for name, taken in times.items():
        print(f"{name:9s} {statistics.median(taken) * 1e6:8.1f} us/token (median of {len(taken)})")


def _llguidance(tokenizer: Any, schema: str) -> tuple[Any, Any, Any]:
    import llguidance
    import llguidance.hf
    import numpy as np

    lltokenizer = llguidance.hf.from_tokenizer(tokenizer)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    bitmask = np.zeros((len(tokenizer) + 31) // 32, dtype=np.int32)

    def new() -> Any:
        return llguidance.LLMatcher(lltokenizer, grammar)

    def fill(matcher: Any) -> None:
        matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, bitmask.nbytes)

    return new, fill, lambda matcher, token: matcher.consume_token(token)


def _xgrammar(tokenizer: Any, schema: str) -> tuple[Any, Any, Any]:
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiled = xgrammar.GrammarCompiler(info).compile_json_schema(schema)
    bitmask = xgrammar.allocate_token_bitmask(1, len(tokenizer))

    def new() -> Any:
        return xgrammar.GrammarMatcher(compiled)

    def fill(matcher: Any) -> None:
        matcher.fill_next_token_bitmask(bitmask)

    return new, fill, lambda matcher, token: matcher.accept_token(token)


def libraries(rounds: int) -> None:
    from prefixkv.engine.loader import load_model

    tokenizer = load_model("smollm2").tokenizer
    schema = json.dumps(SHIP)
    reply = json.dumps({"name": "Northern Star", "crew": 42, "ports": ["Oslo", "Rome", "Riga"]})
    ids = tokenizer.encode(reply, add_special_tokens=False)
    for name, make in (("llguidance", _llguidance), ("xgrammar", _xgrammar)):
        try:
            new, fill, advance = make(tokenizer, schema)
        except ImportError:
            print(f"{name:10s} not installed")
            continue
        fills, advances = [], []
        for _ in range(rounds):
            matcher = new()
            for token in ids:
                begun = time.perf_counter()
                fill(matcher)
                filled = time.perf_counter()
                assert advance(matcher, token), (name, token)
                fills.append(filled - begun)
                advances.append(time.perf_counter() - filled)
        print(
            f"{name:10s} fill {statistics.median(fills) * 1e6:7.1f} us, advance "
            f"{statistics.median(advances) * 1e6:7.1f} us per token (median of {len(fills)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["batch", "accept", "libraries"])
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    if args.what == "batch":
        batch(args.sequences, args.tokens, args.rounds)
    elif args.what == "accept":
        accept(args.calls, args.rounds * 4)
    else:
        libraries(args.rounds * 10)


if __name__ == "__main__":
    main()
