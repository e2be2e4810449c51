"""prefixkv's SGLang radix-cache backend against SGLang's own ``RadixCache``, step by step.

Hypothesis draws sequences of what SGLang's scheduler does to its tree (match, insert, lock,
unlock, a request's match-lock-checkpoint-release, evict, reset) at page sizes 1 and 16; both
caches get the same calls and the same KV slots, and after every step the driver compares
matched lengths and slot indices, insert prefix lengths, lock deltas, evictable / protected /
total sizes, the slots freed and the KV events (``tests/integrations/twin_driver.py``).

Marked ``process``: SGLang's KV-event block hashes come from a C++ extension it compiles on
first use (a compiler process). SGLang missing: skipped, or failed under
``PREFIXKV_REQUIRE_SGLANG=1`` (``.ci/run`` sets it).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integrations.sglang_twin import load
from tests.integrations.twin_driver import Twin

pytestmark = [pytest.mark.process, pytest.mark.slow]

STEPS = 40


@pytest.fixture(scope="module")
def adapter() -> Any:
    return load()


def chunk_pool(page_size: int) -> list[tuple[int, ...]]:
    """Pages the sequences are made of: three distinct ones and a near-copy of the first
    (differs in its last token), so prefixes share whole pages and diverge inside one."""
    base = [tuple([k] * page_size) for k in (1, 2, 3)]
    near = (*base[0][:-1], 9) if page_size > 1 else (9,)
    return [*base, near]


def sequences(page_size: int) -> st.SearchStrategy[list[int]]:
    pages = st.lists(st.sampled_from(chunk_pool(page_size)), max_size=8 if page_size > 1 else 10)
    tail = st.lists(st.sampled_from([1, 2, 3]), max_size=page_size - 1)
    return st.builds(lambda ps, t: [tok for page in ps for tok in page] + t, pages, tail)


def step(twin: Twin, data: st.DataObject, page_size: int) -> None:
    tokens = sequences(page_size)
    kinds = ["insert", "match", "start", "checkpoint", "finish", "evict"]
    kinds += ["lock"] if twin.fresh else []
    kinds += ["unlock"] if twin.locks else []
    kinds += ["reset"] if not twin.locks and not twin.a.reqs else []
    kind = data.draw(st.sampled_from(kinds), label="op")
    index = st.integers(0, 63)
    if kind in ("insert", "match", "start"):
        getattr(twin, kind)(data.draw(tokens, label=kind))
    elif kind == "checkpoint":
        generated = st.lists(st.sampled_from([1, 2, 3, 9]), max_size=2 * page_size)
        twin.checkpoint(data.draw(index), data.draw(generated, label="generated"))
    elif kind in ("lock", "unlock", "finish"):
        getattr(twin, kind)(data.draw(index))
    elif kind == "evict":
        twin.evict(data.draw(st.integers(0, 12 * page_size), label="evict tokens"))
    else:
        twin.reset()
    twin.compare()


@pytest.mark.parametrize("page_size", [1, 16])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_adapter_behaves_as_sglang_radix_cache(
    adapter: Any, page_size: int, data: st.DataObject
) -> None:
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.radix_cache import RadixCache

    twin = Twin(adapter, RadixCache, CacheInitParams, page_size)
    twin.compare()  # both start with AllBlocksCleared
    for _ in range(STEPS):
        step(twin, data, page_size)
