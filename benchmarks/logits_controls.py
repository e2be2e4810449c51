"""What the logits controls and logprobs cost a decode step, and that a request without them
costs what it did.

``accept``: the time of one ``Decoding.accept`` (processors, sampler, logprob report, text)
on SmolLM2-sized logits (49,152) with SmolLM2's tokenizer, per setting: greedy plain, greedy
with every control, and with logprobs 0 and 20 (median of ``--calls`` calls, fresh random
logits each call, the same for every setting).

``generate``: greedy ``Engine.generate`` on SmolLM2 (no controls), ms per token after the
first, best of ``--rounds``, and a digest of the token ids. It uses only the public API, so
running it with ``PYTHONPATH`` on another tree's ``src`` compares the two (the digests must
match: bit-identical greedy replies).

    PYTHONPATH=src python benchmarks/logits_controls.py accept
    PYTHONPATH=src python benchmarks/logits_controls.py generate --weights fp32
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from typing import Any

import torch

SETTINGS: dict[str, dict[str, Any]] = {
    "greedy": {},
    "greedy+controls": {
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "logit_bias": {str(t): 5 for t in range(100, 110)},
        "min_tokens": 4,
        "stop_token_ids": [7],
    },
    "greedy+logprobs0": {"logprobs": 0},
    "greedy+logprobs20": {"logprobs": 20},
    "sampled(T=0.8,top_p=0.9)": {"temperature": 0.8, "top_p": 0.9, "seed": 1},
}
PROMPT = "Write a short story about a cat who keeps the ship's log. " * 8


def accept(calls: int, rounds: int) -> None:
    """Settings interleaved: each round runs ``calls`` accepts of every setting in turn, so
    load from other processes hits them alike; a tree whose ``Decoding`` predates the
    controls (``accept(logits)``) runs the plain greedy setting only."""
    import inspect

    from prefixkv.engine.decoding import Decoding
    from prefixkv.engine.loader import load_model
    from prefixkv.engine.request import Request, SamplingParams
    from prefixkv.engine.sinks import Collect
    from prefixkv.tokens import as_token_bytes

    torch.set_num_threads(1)  # as a runner thread on a busy machine
    tokenizer = load_model("smollm2").tokenizer
    prompt = as_token_bytes(tokenizer(PROMPT)["input_ids"])
    torch.manual_seed(0)
    logits = [torch.randn(49152) * 4 for _ in range(calls)]
    before = len(inspect.signature(Decoding.accept).parameters) == 2
    settings = {"greedy": {}} if before else SETTINGS
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, values in settings.items():
            params = SamplingParams.create(max_tokens=calls + 1, **values)
            decoding = Decoding(Request(prompt, params), tokenizer, frozenset({2}))
            sink = Collect()
            for row in logits:
                begun = time.perf_counter()
                decoding.accept(row) if before else decoding.accept(row, sink)
                times[name].append(time.perf_counter() - begun)
    for name, taken in times.items():
        print(f"{name:28s} {statistics.median(taken) * 1e6:8.1f} us/token (median of {len(taken)})")


def generate(weights: str, tokens: int, rounds: int) -> None:
    from prefixkv.engine.engine import Engine

    torch.set_num_threads(1)
    engine = Engine.from_pretrained("smollm2", weights=weights)
    best = float("inf")
    digest = ""
    for _ in range(rounds):
        reply = engine.generate(PROMPT, max_tokens=tokens, namespace=object())
        per_token = (reply.total_time - reply.ttft) / (reply.completion_tokens - 1)
        best = min(best, per_token)
        digest = hashlib.sha256(repr(reply.token_ids).encode()).hexdigest()[:12]
    print(f"greedy {tokens} tokens: {best * 1e3:.2f} ms/token (best of {rounds}), ids {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["accept", "generate"])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--weights", default="fp32")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.what == "accept":
        accept(args.calls, args.rounds * 4)
    else:
        generate(args.weights, args.tokens, args.rounds)


if __name__ == "__main__":
    main()
