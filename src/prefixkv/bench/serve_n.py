"""What ``n`` samples of one prompt cost through a real server, against one sample:
``prefixkv bench serve --n N``.

After a setting's client counts, on the same server: ``--n-rounds`` rounds, each sending
one request with ``n = 1`` and then one with ``n = N``, one at a time, every request about a
document of its own (so nothing comes from the cache and both pay a whole prefill), sampled
(temperature 0.8, seeded) with ``ignore_eos`` so that every sample writes exactly
``--max-tokens`` tokens. The figure is the median wall time of the ``n = N`` requests over
that of the ``n = 1`` requests (and the fastest over the fastest, which other work on the
machine disturbs least): ``N`` separate requests would cost about ``N`` times one;
prefixkv prefills the prompt once and decodes the ``N`` samples in one batch. A server that
ignores ``ignore_eos`` may stop early: the completion tokens are kept beside the times.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import openai

from prefixkv.bench.serve_client import api_client
from prefixkv.bench.workloads import Request, document_qa_workload

SEED = 999  # the workload seed of the n rounds' documents (client counts use their count)
TEMPERATURE = 0.8


@dataclass(frozen=True)
class NCost:
    """``rounds`` timings of one request at ``n = 1`` and at ``n = n``, and each request's
    prompt and completion tokens (from usage)."""

    n: int
    one_s: tuple[float, ...]
    many_s: tuple[float, ...]
    prompt_tokens: tuple[int, ...]
    one_tokens: tuple[int, ...]
    many_tokens: tuple[int, ...]

    @property
    def ratio(self) -> float:
        """Median time of ``n`` samples over the median time of one."""
        return statistics.median(self.many_s) / statistics.median(self.one_s)

    @property
    def best_ratio(self) -> float:
        """Fastest ``n`` samples over the fastest one: on a machine other work shares, the
        rounds it disturbed least."""
        return min(self.many_s) / min(self.one_s)


def n_workload(rounds: int, sentences: int) -> list[Request]:
    """``2 * rounds`` requests, each about a document of its own."""
    return document_qa_workload(2 * rounds, 1, 2 * rounds, sentences, seed=SEED)


async def _timed(
    api: openai.AsyncOpenAI, model: str, request: Request, n: int, max_tokens: int, seed: int
) -> tuple[float, int, int]:
    """Seconds for one whole (not streamed) request, its prompt and completion tokens."""
    messages: Any = request.chat()
    start = time.perf_counter()
    reply = await api.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=TEMPERATURE,
        seed=seed, n=n, extra_body={"ignore_eos": True},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if reply.usage is None or len(reply.choices) != n:
        raise RuntimeError(f"asked for n={n}: {len(reply.choices)} choices, usage {reply.usage}")
    return seconds, reply.usage.prompt_tokens, reply.usage.completion_tokens


async def measure_n(
    url: str, model: str, headers: dict[str, str], n: int, rounds: int, args: Any
) -> NCost:
    """The n rounds against the server at ``url`` (``args``: max_tokens and sentences)."""
    work = n_workload(rounds, args.sentences)
    one, many = [], []
    async with api_client(url, headers) as api:
        for r in range(rounds):
            one.append(await _timed(api, model, work[2 * r], 1, args.max_tokens, r))
            many.append(await _timed(api, model, work[2 * r + 1], n, args.max_tokens, r))
    return NCost(
        n=n,
        one_s=tuple(t for t, _, _ in one),
        many_s=tuple(t for t, _, _ in many),
        prompt_tokens=tuple(p for _, p, _ in [*one, *many]),
        one_tokens=tuple(c for _, _, c in one),
        many_tokens=tuple(c for _, _, c in many),
    )


def run_n(url: str, model: str, headers: dict[str, str], args: Any) -> NCost:
    return asyncio.run(measure_n(url, model, headers, args.n, args.n_rounds, args))


def n_line(setting: str, cost: NCost) -> str:
    """One printed line: the ratio, the medians, each round, the tokens."""
    rounds = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(cost.one_s, cost.many_s, strict=True))
    return (
        f"{setting}: n={cost.n} costs {cost.ratio:.2f}x one request (fastest rounds: "
        f"{cost.best_ratio:.2f}x; median "
        f"{statistics.median(cost.many_s):.2f} s vs {statistics.median(cost.one_s):.2f} s; "
        f"rounds n=1/n={cost.n}: {rounds} s; prompts {min(cost.prompt_tokens)}-"
        f"{max(cost.prompt_tokens)} tokens; completion tokens {list(cost.one_tokens)} vs "
        f"{list(cost.many_tokens)})"
    )
