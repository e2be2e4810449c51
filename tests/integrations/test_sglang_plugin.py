"""The SGLang backend's registration and its refusals (each error names what is refused).

Marked ``slow``: importing SGLang takes about 15 s. SGLang missing: skipped, or failed under
``PREFIXKV_REQUIRE_SGLANG=1``.
"""

from __future__ import annotations

from array import array
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tomllib
import torch

from tests.integrations.sglang_twin import RecordingAllocator, load

pytestmark = pytest.mark.slow

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture(scope="module")
def adapter() -> Any:
    return load()


def params(page_size: int = 16, **overrides: Any) -> Any:
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams

    fields = {
        "disable": False,
        "req_to_token_pool": None,
        "token_to_kv_pool_allocator": RecordingAllocator(page_size),
        "page_size": page_size,
    }
    return CacheInitParams(**(fields | overrides))


def context(**flags: bool) -> SimpleNamespace:
    names = ("is_hybrid_swa", "is_hybrid_ssm", "enable_hierarchical_cache")
    base = dict.fromkeys((*names, "disable_radix_cache", "is_dsa"), False)
    return SimpleNamespace(params=params(), **(base | flags))


def test_entry_point_registers_the_backend(adapter: Any) -> None:
    from sglang.srt.mem_cache.registry import get_radix_cache_factory
    from sglang.srt.plugins import GENERAL_PLUGINS_GROUP

    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]
    value = declared[GENERAL_PLUGINS_GROUP][adapter.BACKEND]
    plugin = EntryPoint(adapter.BACKEND, value, GENERAL_PLUGINS_GROUP).load()
    assert plugin is adapter.register
    plugin()
    plugin()  # SGLang may load plugins more than once per process
    cache = get_radix_cache_factory("prefixkv")(context())
    assert isinstance(cache, adapter.PrefixKVRadixCache) and cache.total_size() == 0


@pytest.mark.parametrize(
    ("flag", "named"),
    [
        ("is_hybrid_swa", "hybrid SWA"),
        ("is_hybrid_ssm", "hybrid Mamba"),
        ("enable_hierarchical_cache", "--enable-hierarchical-cache"),
        ("disable_radix_cache", "--disable-radix-cache"),
        ("is_dsa", "DSA"),
    ],
)
def test_factory_refuses_what_it_does_not_cover(adapter: Any, flag: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        adapter._factory(context(**{flag: True}))


def test_bad_settings_and_values_are_refused(adapter: Any) -> None:
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    with pytest.raises(ValueError, match="eviction policy 'fifo'"):
        adapter.PrefixKVRadixCache(params(eviction_policy="fifo"))
    with pytest.raises(ValueError, match="EAGLE"):
        adapter.PrefixKVRadixCache(params(is_eagle=True))
    cache = adapter.PrefixKVRadixCache(params())
    key = RadixKey(array("q", [5] * 32))
    scattered = torch.arange(32, dtype=torch.int64).flip(0)
    with pytest.raises(ValueError, match="value: the slots of a page must be consecutive"):
        cache.insert(InsertParams(key=key, value=scattered))
    with pytest.raises(ValueError, match=r"InsertParams\.value"):
        cache.insert(InsertParams(key=key))
    assert cache.total_size() == 0  # nothing half-done


def test_lfu_policy_and_namespaces(adapter: Any) -> None:
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    cache = adapter.PrefixKVRadixCache(params(eviction_policy="lfu"))
    slots = torch.arange(16, 48, dtype=torch.int64)
    tokens = array("q", [7] * 32)
    cache.insert(InsertParams(key=RadixKey(tokens, "lora-a"), value=slots))
    assert cache.match_prefix(MatchPrefixParams(key=RadixKey(tokens))).device_prefix_len == 0
    hit = cache.match_prefix(MatchPrefixParams(key=RadixKey(tokens, "lora-a")))
    assert hit.device_prefix_len == 32
    assert torch.equal(cache.path_device_indices(hit.last_device_node), slots)


def test_events_of_namespaced_prefixes_are_refused(adapter: Any) -> None:
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    cache = adapter.PrefixKVRadixCache(params(enable_kv_cache_events=True))
    key = RadixKey(array("q", [7] * 16), cache_salt="tenant")
    with pytest.raises(NotImplementedError, match="namespaced"):
        cache.insert(InsertParams(key=key, value=torch.arange(16, 32, dtype=torch.int64)))
    assert cache.total_size() == 0  # refused before anything changed
    assert [type(event).__name__ for event in cache.take_events()] == ["AllBlocksCleared"]


def test_dfs_weight_order_puts_shared_prefixes_together(adapter: Any) -> None:
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    cache = adapter.PrefixKVRadixCache(params())
    a, b = [1] * 16 + [2] * 16, [3] * 16
    cache.insert(InsertParams(key=RadixKey(array("q", a)), value=torch.arange(16, 48)))
    cache.insert(InsertParams(key=RadixKey(array("q", b)), value=torch.arange(64, 80)))
    queries = [a, b, a[:16], b, a]
    handles = [
        cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", q)))).last_device_node
        for q in queries
    ]
    order = cache.dfs_weight_order(handles)
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert [queries[i][0] for i in order] == [1, 1, 1, 3, 3]  # each prefix's requests adjacent
    before = cache.index.stats().queries
    cache.touch_prefix(RadixKey(array("q", a)))  # records a use, as a match does
    assert cache.index.stats().queries == before + 1
