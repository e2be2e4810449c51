"""Guarantee: thread safety of the index. 8 threads x 1,000 mixed insert / match / pin /
unpin / evict calls on one PrefixIndex raise nothing but the legal StaleMatchError, lose no
pin, and leave every invariant intact."""

from __future__ import annotations

import random
import threading

from prefixkv import PrefixIndex


def test_eight_threads_hammering_the_index() -> None:
    index = PrefixIndex(2)
    errors: list[BaseException] = []
    counter = iter(range(10**9))
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        held = []
        try:
            for _ in range(1000):
                tokens = [rng.randrange(3) for _ in range(rng.randrange(12))]
                roll = rng.random()
                if roll < 0.4:
                    with lock:
                        values = [next(counter) for _ in range(len(tokens) // 2)]
                    index.insert(tokens, values)
                elif roll < 0.7:
                    match = index.match(tokens)
                    try:
                        index.pin(match)
                        held.append(match)
                    except Exception as exc:  # StaleMatchError is legal under eviction
                        assert type(exc).__name__ == "StaleMatchError"
                elif roll < 0.85 and held:
                    index.unpin(held.pop(rng.randrange(len(held))))
                else:
                    index.evict(rng.randrange(4))
            for match in held:
                index.unpin(match)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert index.pinned_blocks == 0
    index.check_invariants()
