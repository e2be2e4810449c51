"""The serial runner's costs on SmolLM2 with one torch thread: TTFT over a ~1,100-token
prompt whose first 1,088 tokens are cached, ms per decoded token, and the time from
``generate`` to the first model call (tokenizing, ``open``, copying the cached blocks in)
and that call's own time (the 20 uncached tokens).

Run it on two trees in turn to compare them (``PYTHONPATH=<tree>/src python
benchmarks/serial_path.py [requests]``); the machine's load moves each figure by 5-10%.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch


def main(requests: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    from prefixkv import Engine

    engine = Engine.from_pretrained("smollm2", cache_bytes=256 << 20)
    doc = " ".join(f"word{i} is number {i}." for i in range(120))
    engine.generate(doc + " Q0", max_tokens=4)  # fills the cache, pays one-off costs
    forward, entered = engine.forward, []

    def timed(*args: Any, **kwargs: Any) -> torch.Tensor:
        entered.append(time.perf_counter())
        logits = forward(*args, **kwargs)
        entered.append(time.perf_counter())
        return logits

    engine.forward = timed  # type: ignore[method-assign]
    ttft, per_token, before, prefill = [], [], [], []
    for i in range(requests):
        entered.clear()
        start = time.perf_counter()
        done = engine.generate(doc + f" Question {i}: what next?", max_tokens=48, temperature=0)
        before.append(entered[0] - start)
        prefill.append(entered[1] - entered[0])
        ttft.append(done.ttft)
        per_token.append((done.total_time - done.ttft) / max(1, len(done.token_ids) - 1))
    return {
        "ttft_ms": {"median": 1e3 * statistics.median(ttft), "min": 1e3 * min(ttft)},
        "ms_per_token": {"median": 1e3 * statistics.median(per_token), "min": 1e3 * min(per_token)},
        "to_first_forward_ms": 1e3 * statistics.median(before),
        "prefill_forward_ms": 1e3 * statistics.median(prefill),
        "prompt_tokens": done.prompt_tokens,
        "cached_tokens": done.cached_tokens,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 25), indent=1))
