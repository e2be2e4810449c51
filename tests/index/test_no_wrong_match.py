"""Guarantee: no wrong match. Blocks are compared as token bytes, never trusted to a hash:
100,000 distinct random blocks give no key collision, and a deliberately colliding
``child_key`` never makes a match serve another prefix's block (it can only cost hits)."""

from __future__ import annotations

import random

import pytest

from prefixkv import PrefixIndex


def test_100k_distinct_random_blocks_have_no_key_collisions() -> None:
    rng = random.Random(2)
    index = PrefixIndex(16)
    prompts = {tuple(rng.randrange(2**32) for _ in range(16)) for _ in range(100_000)}
    for value, prompt in enumerate(sorted(prompts)):
        assert index.insert(prompt, [value]) == []
    assert len(index) == len(prompts) == 100_000
    for value, prompt in enumerate(sorted(prompts)):
        if value % 10 == 0:
            assert index.match(prompt).values == (value,)
    index.check_invariants()


@pytest.mark.parametrize("child_key", [lambda block: 0, lambda block: block[0] & 1])
def test_colliding_child_keys_never_yield_a_wrong_match(child_key: object) -> None:
    """Each value names its own prefix, so a wrong match is detectable."""
    rng = random.Random(3)
    index = PrefixIndex(2, child_key=child_key)  # type: ignore[arg-type]
    prompts = [[rng.randrange(4) for _ in range(rng.randrange(1, 12))] for _ in range(300)]
    for step in range(3000):
        prompt = rng.choice(prompts) + [rng.randrange(4) for _ in range(rng.randrange(3))]
        if step % 3 == 0:
            index.insert(prompt, [tuple(prompt[: 2 * (i + 1)]) for i in range(len(prompt) // 2)])
        elif step % 17 == 0:
            index.evict(rng.randrange(5))
        else:
            match = index.match(prompt)
            for i, value in enumerate(match.values):
                assert value == tuple(prompt[: 2 * (i + 1)]), "served another prefix's block"
    index.check_invariants()
