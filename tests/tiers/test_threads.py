"""TieredCache hammered by threads: every lookup serves exactly its prompt's KV."""

from __future__ import annotations

import random
import threading
from pathlib import Path

from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.tiered import TieredCache
from tests.tiers.kv import BLOCK_BYTES, FINGERPRINT, hot_cache, kv_of, served


def test_eight_threads_store_and_look_up_through_ram_and_disk(tmp_path: Path) -> None:
    cache = TieredCache(hot_cache(8), [DiskTier(tmp_path, 40 * (BLOCK_BYTES + 200))], FINGERPRINT)
    prompts = [
        [random.Random(i).randrange(1000) for _ in range(4 * (1 + i % 5))] for i in range(24)
    ]
    errors: list[BaseException] = []
    total = [0]

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(150):
                tokens = rng.choice(prompts)
                if rng.random() < 0.4:
                    cache.hot.store(tokens, kv_of(tokens))
                    continue
                total[0] += served(cache, tokens)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert cache.flush(30)
    cache.check_invariants()
    (disk,) = cache.tier_stats()
    disk_tier = cache.tiers[0]
    assert isinstance(disk_tier, DiskTier)
    disk_tier.check_invariants()
    assert total[0] > 0 and disk.hit_blocks > 0 and disk.verification_failures == 0
    assert cache.stats().pinned_blocks == 0
