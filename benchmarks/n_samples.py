"""What ``n`` samples of one prompt cost on the batch runner, against one request and against
``n`` separate requests, on SmolLM2.

Each round runs, on one BatchRunner (``run_all`` on this thread, ``--threads`` cores):
``one`` (one request), ``n`` (``samples_of(request, n)``: what a request with ``n`` becomes),
``separate`` (``n`` requests with the same prompt, submitted together in one namespace: the
runner shares the prompt's full blocks between them too, as it would for ``n`` clients
sending the same prompt at once) and ``separate, no sharing`` (``n`` requests in ``n``
namespaces: every one prefills the whole prompt, as a server without a prefix cache does).
Every request uses a prompt no earlier round sent (a fresh namespace each time), so nothing
comes from the cache across rounds. Sampling at temperature 0.8 with ``ignore_eos``, so every
sample generates exactly ``--tokens``. Prints each setting's wall time (median of
``--rounds``, each round's too), its ratio to ``one``, and the prompt tokens fed (from the step reports).

    PYTHONPATH=src python benchmarks/n_samples.py --n 8 --prompt-tokens 512 --tokens 32
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

PARAGRAPH = "The keeper wrote down every ship that passed the light, and every storm. "


def run(args: argparse.Namespace) -> None:
    from prefixkv.cache import Namespace
    from prefixkv.engine.batch.records import StepReport
    from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.request import SamplingParams
    from prefixkv.engine.samples import samples_of

    torch.set_num_threads(args.threads)
    engine = Engine.from_pretrained("smollm2", weights=args.weights, cache_bytes=512 << 20)
    ids = (engine.tokenizer(PARAGRAPH * 200)["input_ids"])[: args.prompt_tokens]
    params = SamplingParams.create(max_tokens=args.tokens, temperature=0.8, seed=1, ignore_eos=True)
    fed: list[int] = [0]

    def count(report: StepReport) -> None:
        fed[0] += report.tokens

    runner = BatchRunner(engine, BatchLimits(max_running=max(16, args.n)), on_step=count)

    def request(space: str) -> Any:
        return engine.request(ids, params, namespace=Namespace(space))

    settings: dict[str, Callable[[str], list[Any]]] = {
        "one": lambda tag: [request(tag)],
        f"n={args.n}": lambda tag: list(samples_of(request(tag), args.n)),
        f"{args.n} separate": lambda tag: [request(tag) for _ in range(args.n)],
        f"{args.n} separate, no sharing": lambda tag: [
            request(f"{tag}/{i}") for i in range(args.n)
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    prompt_fed: dict[str, int] = {}
    for round_ in range(args.rounds):
        for name, make in settings.items():
            requests = make(f"{name}/{round_}")
            fed[0] = 0
            begun = time.perf_counter()
            completions = runner.run_all(requests)
            times[name].append(time.perf_counter() - begun)
            generated = sum(c.completion_tokens for c in completions)
            prompt_fed[name] = fed[0] - (generated - len(completions))  # decode feeds out
    base = statistics.median(times["one"])
    print(f"prompt {len(ids)} tokens, {args.tokens} generated per sample, {args.threads} threads")
    for name, taken in times.items():
        wall = statistics.median(taken)
        rounds = " ".join(f"{t:.2f}" for t in taken)
        print(
            f"{name:26s} {wall:7.2f} s  {wall / base:5.2f}x one  "
            f"prompt tokens fed {prompt_fed[name]:5d}  (rounds: {rounds} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", default="fp32")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
