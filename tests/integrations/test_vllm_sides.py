"""The vLLM connector's two halves without vLLM: the scheduler's offers and plans against
vLLM-shaped requests and scheduler outputs, the worker's block copies against real disk
tiers and cache tensors shaped as vLLM's CPU backend shapes them. (vLLM itself drives
them in test_vllm_connector.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prefixkv.integrations.vllm.plan import BlockRun
from prefixkv.integrations.vllm.scheduler import SchedulerSide
from prefixkv.integrations.vllm.settings import parse_settings
from prefixkv.integrations.vllm.worker import WorkerSide
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.naming import BlockNamer
from prefixkv.tiers.seal import ChecksumSeal
from prefixkv.tokens import as_token_bytes

BLOCK = 4
FINGERPRINT = bytes(range(16))


def request(req_id: str, tokens: list[int], **extra: Any) -> SimpleNamespace:
    fields = {"lora_request": None, "mm_features": [], "cache_salt": None} | extra
    return SimpleNamespace(request_id=req_id, prompt_token_ids=tokens, **fields)


def output(
    new: list[tuple[str, list[int], int]],
    scheduled: dict[str, int],
    cached: Sequence[tuple[str, list[int], int]] = (),
) -> SimpleNamespace:
    """A SchedulerOutput: ``new`` (id, block ids, computed tokens) and ``cached`` (id, added
    block ids, computed tokens), ``scheduled`` tokens by id."""
    return SimpleNamespace(
        scheduled_new_reqs=[
            SimpleNamespace(req_id=i, block_ids=(b,), num_computed_tokens=c) for i, b, c in new
        ],
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[i for i, _, _ in cached], resumed_req_ids=set(),
            new_block_ids=[(b,) for _, b, _ in cached],
            num_computed_tokens=[c for _, _, c in cached],
        ),
        num_scheduled_tokens=scheduled, finished_req_ids=set(),
    )  # fmt: skip


def caches(blocks: int = 8, layers: int = 3) -> dict[str, torch.Tensor]:
    """Random caches shaped as vLLM's CPU attention: [blocks, heads, block, 2 * head]."""
    gen = torch.Generator().manual_seed(blocks * layers)
    return {
        f"layer.{i}": torch.randn(blocks, 2, BLOCK, 2 * 8, generator=gen) for i in range(layers)
    }


@pytest.fixture
def disk(tmp_path: Path) -> DiskTier:
    return DiskTier(tmp_path, 1 << 30)


def saved_prompt(disk: DiskTier, tokens: list[int], kv: dict[str, torch.Tensor]) -> SchedulerSide:
    """Run a prompt through a scheduler and a worker that compute and save it."""
    side = SchedulerSide(BlockNamer(FINGERPRINT, BLOCK), [disk])
    assert side.offer(request("r", tokens), 0) == 0
    plan = side.plan(output([("r", [5, 1, 7, 2], 0)], {"r": len(tokens)}))
    assert not plan.loads and [r.block_ids for r in plan.saves] == [(5, 1, 7)]
    WorkerSide([disk], FINGERPRINT, ChecksumSeal(), kv).save(plan.saves)
    return side


def test_a_saved_prompt_is_offered_and_loaded_bit_for_bit(disk: DiskTier) -> None:
    tokens = list(range(100, 114))  # 3 full blocks and 2 tokens
    kv = caches()
    saved_prompt(disk, tokens, kv)
    side = SchedulerSide(BlockNamer(FINGERPRINT, BLOCK), [DiskTier(disk.root.parent, 1 << 30)])
    assert side.offer(request("s", tokens), 0) == 3 * BLOCK
    assert side.offer(request("s", tokens), BLOCK) == 2 * BLOCK  # past vLLM's own first block
    assert side.offer(request("t", tokens[:12]), 0) == 2 * BLOCK  # one token left to compute
    assert side.offer(request("u", tokens, cache_salt="other"), 0) == 0
    assert side.offer(request("v", tokens, lora_request=object()), 0) == 0
    side.offer(request("s", tokens), 0)
    side.allocated("s", 3 * BLOCK)
    plan = side.plan(output([("s", [3, 0, 6, 4], 3 * BLOCK)], {"s": 2}))
    assert [(r.first, r.block_ids) for r in plan.loads] == [(0, (3, 0, 6))] and not plan.saves
    into = caches()
    failed = WorkerSide([disk], FINGERPRINT, ChecksumSeal(), into).load(plan.loads)
    assert failed == set()
    for name, tensor in kv.items():
        assert torch.equal(into[name][[3, 0, 6]], tensor[[5, 1, 7]])


def test_a_damaged_record_fails_its_block_and_the_rest_and_is_removed(disk: DiskTier) -> None:
    tokens = list(range(100, 114))
    saved_prompt(disk, tokens, caches())
    names = BlockNamer(FINGERPRINT, BLOCK).names(as_token_bytes(tokens), None, 3)
    file = disk.root / names[1].hex()[:2] / f"{names[1].hex()}.kv"
    data = bytearray(file.read_bytes())
    data[-40] ^= 1
    file.write_bytes(bytes(data))
    run = BlockRun("s", 0, BlockNamer(FINGERPRINT, BLOCK).root(None), tuple(names),
                   bytes(as_token_bytes(tokens[:12])), (3, 0, 6))  # fmt: skip
    worker = WorkerSide([disk], FINGERPRINT, ChecksumSeal(), caches())
    assert worker.load([run]) == {0, 6}
    counters = worker.counters()
    assert (counters.loaded_blocks, counters.failures) == (1, {"checksum": 2})
    assert disk.holds(names) == [True, False, True]  # the damaged record is gone
    worker.save([run])  # a request whose load failed this step saves nothing
    assert disk.holds(names) == [True, False, True]


def test_saves_follow_the_computation_and_rewind_after_a_failed_load(disk: DiskTier) -> None:
    side = SchedulerSide(BlockNamer(FINGERPRINT, BLOCK), [disk])
    tokens = list(range(200, 220))  # 5 blocks
    side.offer(request("r", tokens), 0)
    first = side.plan(output([("r", [9, 8], 0)], {"r": 6}))  # chunked prefill: 6 tokens
    assert [(r.first, r.block_ids) for r in first.saves] == [(0, (9,))]
    second = side.plan(output([], {"r": 14}, cached=[("r", [7, 6, 5], 6)]))
    assert [(r.first, r.block_ids) for r in second.saves] == [(1, (8, 7, 6, 5))]
    # vLLM rewound the request to block 2 (a failed load): blocks 2.. are saved again
    third = side.plan(output([], {"r": 12}, cached=[("r", [], 8)]))
    assert [(r.first, r.block_ids) for r in third.saves] == [(2, (7, 6, 5))]
    assert third.saves[0].parent == second.saves[0].names[0]


def test_settings_name_the_bad_key() -> None:
    with pytest.raises(ValueError, match="unknown key 'disk'"):
        parse_settings({"disk": "/tmp"})
    with pytest.raises(ValueError, match="disk_bytes"):
        parse_settings({"disk_dir": "/tmp", "disk_bytes": "big"})
    with pytest.raises(ValueError, match="give disk_dir or redis_url"):
        parse_settings({})
    assert parse_settings({"redis_url": "redis://h"}).redis_url == "redis://h"


def test_notice_sees_files_another_process_wrote(tmp_path: Path) -> None:
    reader, writer = DiskTier(tmp_path, 1 << 30), DiskTier(tmp_path, 1 << 30)
    tokens = list(range(100, 114))
    saved_prompt(writer, tokens, caches())
    names = BlockNamer(FINGERPRINT, BLOCK).names(as_token_bytes(tokens), None, 3)
    assert reader.holds(names) == [False] * 3
    assert reader.notice(names) == [True] * 3
    reader.check_invariants()


@given(
    length=st.integers(1, 40),
    chunks=st.lists(st.integers(1, 12), min_size=1, max_size=30),
    rewind=st.integers(0, 10),
)
def test_saves_follow_a_reference_over_chunked_prefills_and_a_rewind(
    length: int, chunks: list[int], rewind: int
) -> None:
    """Chunked prefill in steps of ``chunks`` tokens; before the second step vLLM rewinds
    the request to block ``rewind`` if it computed past it (a failed load). Reference: each
    step saves the full blocks from the last one saved (or the rewound one) to the last
    computed, under the request's vLLM block ids; every computed full block ends up saved."""
    side = SchedulerSide(BlockNamer(FINGERPRINT, BLOCK), [])
    tokens = list(range(300, 300 + length))
    block_ids = list(range(100, 101 + length // BLOCK))
    side.offer(request("r", tokens), 0)
    computed = next_save = 0
    for step, chunk in enumerate(chunks):
        if computed >= length:
            break
        if step == 1 and rewind * BLOCK < computed:
            computed = rewind * BLOCK
            next_save = min(next_save, rewind)
        scheduled = min(chunk, length - computed)
        if step == 0:
            out = output([("r", block_ids, 0)], {"r": scheduled})
        else:
            out = output([], {"r": scheduled}, cached=[("r", [], computed)])
        computed += scheduled
        done = computed // BLOCK
        expected = [(next_save, tuple(block_ids[next_save:done]))] if done > next_save else []
        assert [(r.first, r.block_ids) for r in side.plan(out).saves] == expected
        next_save = max(next_save, done)
