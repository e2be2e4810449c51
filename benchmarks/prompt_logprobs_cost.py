"""What ``prompt_logprobs`` costs on SmolLM2: the scoring prefill
(:func:`prefixkv.engine.prompt_logprobs.prompt_logprobs`: logits, log_softmax, rank and top-k
at every prompt position, reading no cached KV) against a plain prefill of the same prompt
from nothing (``Engine.next_token_logits`` in a fresh namespace: last logits only). A
request asking for prompt logprobs pays the first on top of its generation, cached prefix
or not. Prints each round's seconds and the medians' ratio.

    PYTHONPATH=src python benchmarks/prompt_logprobs_cost.py --prompt-tokens 700 --top 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

PARAGRAPH = "The keeper wrote down every ship that passed the light, and every storm. "


def main() -> None:
    from prefixkv.cache import Namespace
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.prompts import prompt_ids

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=700)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.from_pretrained("smollm2", weights=args.weights, cache_bytes=256 << 20)
    tokens = engine.tokenizer(PARAGRAPH * 200)["input_ids"][: args.prompt_tokens]
    ids = prompt_ids(tokens, engine.tokenizer, engine.vocab_size)
    plain, scored = [], []
    for round_ in range(args.rounds):
        begun = time.perf_counter()
        engine.next_token_logits(tokens, namespace=Namespace(f"round-{round_}"))
        plain.append(time.perf_counter() - begun)
        begun = time.perf_counter()
        engine.prompt_logprobs(ids, args.top)
        scored.append(time.perf_counter() - begun)
        print(f"round {round_}: prefill {plain[-1]:.3f} s, prompt_logprobs {scored[-1]:.3f} s")
    ratio = statistics.median(scored) / statistics.median(plain)
    print(
        f"{args.prompt_tokens} tokens, top {args.top}, {args.weights}: prefill "
        f"{statistics.median(plain):.3f} s, prompt_logprobs {statistics.median(scored):.3f} s "
        f"(median of {args.rounds}): {ratio:.2f}x a prefill"
    )


if __name__ == "__main__":
    main()
