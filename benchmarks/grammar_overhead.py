"""What a grammar mask (structured outputs, llguidance) costs a decode step on SmolLM2.

``batch``: the batch runner in-process (no HTTP), ``--sequences`` requests of one prompt at
once, sampled (temperature 0.8, a seed each), ``--tokens`` tokens each, every request either
masked by a JSON schema (an array of at least 100 objects, so no reply completes before
``--tokens``) or unmasked. Rounds alternate masked and unmasked (the host's load hits both
alike); each prints the median of its decode-only steps. The per-token overhead is
(masked step - unmasked step) / sequences.

``accept``: one ``Decoding.accept`` (processors, sampler, text) on SmolLM2-sized random
logits with SmolLM2's tokenizer, with and without the mask (median of ``--calls``, settings
interleaved): the mask's own cost, without the model's noise.

    PYTHONPATH=src python benchmarks/grammar_overhead.py batch --sequences 4 --rounds 3
    PYTHONPATH=src python benchmarks/grammar_overhead.py accept
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
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.sinks import Collect

    torch.set_num_threads(2)
    engine = Engine.from_pretrained("smollm2")
    prompt = [{"role": "user", "content": PROMPT}]
    steps: dict[str, list[float]] = {"unmasked": [], "masked": []}
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
    print(
        f"{sequences} sequences: unmasked {unmasked * 1e3:.2f} ms/step, masked "
        f"{masked * 1e3:.2f} ms/step; overhead {(masked - unmasked) / sequences * 1e3:.3f} "
        f"ms per masked token ({(masked / unmasked - 1) * 100:+.1f}% a step)"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["batch", "accept"])
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    if args.what == "batch":
        batch(args.sequences, args.tokens, args.rounds)
    else:
        accept(args.calls, args.rounds * 4)


if __name__ == "__main__":
    main()
