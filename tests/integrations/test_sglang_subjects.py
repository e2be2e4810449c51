"""The index benchmark's SGLang subjects (classic tree, Rust-core unified tree, prefixkv's
backend) answer the same SGLang-shaped calls alike, so their timings compare the same work.

Marked ``process``: loading SGLang's Rust TreeCore runs ``ldconfig -p``. Skipped without
SGLang unless PREFIXKV_REQUIRE_SGLANG=1.
"""

from __future__ import annotations

import random
from array import array

import pytest

from tests.integrations.sglang_twin import load

pytestmark = [pytest.mark.process, pytest.mark.slow]


def test_subjects_agree_on_the_benchmark_calls() -> None:
    load()
    from prefixkv.bench.peers.sglang import KINDS, SGLangRadix

    rng = random.Random(3)
    prompts = [array("q", [rng.randrange(49152) for _ in range(n)]) for n in (40, 300, 1030)]
    shared = array("q", [*prompts[1][:160], *[rng.randrange(49152) for _ in range(90)]])
    subjects = [SGLangRadix(16, 16, kind) for kind in KINDS]
    assert [s.name for s in subjects] == [
        "sglang(page=16)",
        "sglang-rust(page=16)",
        "prefixkv-sglang(page=16)",
    ]
    answers = []
    for subject in subjects:
        for tokens in prompts:
            subject.insert(tokens)
        matched = [subject.match(tokens) for tokens in (*prompts, shared)]
        subject.pin_unpin(subject.pin(prompts[2]))
        sizes = (subject.total_size(), subject.evictable_size(), subject.protected_size())
        answers.append((matched, sizes))
        assert subject.allocator.live == subject.total_size()  # freed what the tree dropped
        assert subject.evict(4) >= 4 * 16
        assert subject.allocator.live == subject.total_size()
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == [32, 288, 1024, 160]
