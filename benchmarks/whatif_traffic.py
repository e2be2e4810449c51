"""Chat traffic for the capacity what-if: documents of unequal popularity, each asked several
questions by several users, sent one at a time to a running ``prefixkv serve`` (started with
``--request-log FILE``), so its log can be replayed with ``prefixkv simulate``. Prints the
hit rate the server's replies reported (``usage.prompt_tokens_details.cached_tokens``).

    prefixkv serve --cache-bytes 64MiB --request-log requests.jsonl &
    PYTHONPATH=src python benchmarks/whatif_traffic.py --requests 120
    prefixkv simulate --log requests.jsonl --cache-bytes 16MiB,32MiB,64MiB,128MiB,256MiB \
        --policy lru,lfu --plot results/simulate.png
"""

from __future__ import annotations

import argparse
import random

from prefixkv.cli.warm import Client

WORDS = [
    "harbour",
    "lantern",
    "tide",
    "keeper",
    "ledger",
    "storm",
    "anchor",
    "pilot",
    "chart",
    "beacon",
    "rope",
    "cargo",
    "mast",
    "current",
    "reef",
    "gull",
    "signal",
    "compass",
    "horizon",
    "fog",
]


def document(number: int, words: int) -> str:
    rng = random.Random(number)
    return f"Document {number}. " + " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--words", type=int, default=150, help="words per document")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    client = Client(args.url, None)
    rng = random.Random(args.seed)
    docs = [document(d, args.words) for d in range(args.documents)]
    cached = prompt = 0
    for i in range(args.requests):
        doc = docs[min(int(rng.paretovariate(1.2)) - 1, len(docs) - 1)]  # a few popular ones
        messages = [
            {"role": "system", "content": doc},
            {"role": "user", "content": f"Question {rng.randrange(4)}: what does it say?"},
        ]
        body = {"messages": messages, "max_tokens": 4, "temperature": 0}
        usage = client.call("/v1/chat/completions", body)["usage"]
        cached += usage["prompt_tokens_details"]["cached_tokens"]
        prompt += usage["prompt_tokens"]
        if (i + 1) % 20 == 0:
            print(f"{i + 1} requests: served hit rate {100 * cached / prompt:.1f}%", flush=True)
    print(f"served hit rate: {100 * cached / prompt:.2f}% ({cached} of {prompt} prompt tokens)")


if __name__ == "__main__":
    main()
