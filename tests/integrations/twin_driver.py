"""The lockstep driver: each method applies one scheduler-shaped operation to SGLang's
``RadixCache`` (side ``a``) and prefixkv's adapter (side ``b``) and asserts that what they
return agrees; :meth:`Twin.compare` checks the state-wide observables after every step."""

from __future__ import annotations

import itertools
from array import array
from typing import Any

import torch

from tests.integrations.sglang_twin import (
    ROW,
    FakeReq,
    KvInfo,
    Side,
    make_side,
    normalized_events,
)

ROWS = 64


class Twin:
    def __init__(self, adapter: Any, radix_cache: Any, params_class: Any, page_size: int) -> None:
        self.api = adapter
        self.page_size = page_size
        self.a = make_side(radix_cache, params_class, page_size, ROWS)
        self.b = make_side(adapter.PrefixKVRadixCache, params_class, page_size, ROWS)
        self.sides = (self.a, self.b)
        self._pages = itertools.count(1)  # page 0 stays unused (SGLang's padding slot)
        self._rows = itertools.count()
        self.fresh: list[tuple[Any, Any]] = []  # match handles made since the last eviction
        self.locks: list[tuple[Any, Any]] = []  # (receipt a, receipt b)

    # --- helpers -----------------------------------------------------------------------------

    def slots(self, num_tokens: int) -> torch.Tensor:
        """Fresh slots for ``num_tokens`` tokens: whole pages, as a paged allocator gives."""
        num_pages = -(-num_tokens // self.page_size)
        firsts = [next(self._pages) * self.page_size for _ in range(num_pages)]
        pages = torch.tensor(firsts, dtype=torch.int64)[:, None] + torch.arange(self.page_size)
        return pages.reshape(-1)[:num_tokens]

    def continue_row(self, row: torch.Tensor, start: int, num_tokens: int) -> torch.Tensor:
        """Slots for positions ``start ...`` of a request's row: the rest of its last page
        first (a paged allocator fills a page before it takes a new one), then fresh pages."""
        in_page = min(-start % self.page_size, num_tokens)
        first = int(row[start - 1]) + 1 if in_page else 0
        head = torch.arange(first, first + in_page, dtype=torch.int64)
        return torch.cat([head, self.slots(num_tokens - in_page)])

    def key(self, tokens: list[int]) -> Any:
        return self.api.RadixKey(array("q", tokens))

    def indices(self, side: Side, node: Any, length: int) -> list[int]:
        path = side.cache.path_device_indices(node)
        assert len(path) == length
        return [int(s) for s in path.tolist()]

    # --- operations --------------------------------------------------------------------------

    def insert(self, tokens: list[int]) -> None:
        key = self.key(tokens).page_aligned(self.page_size)
        value = self.slots(len(key))
        results = [s.cache.insert(self.api.InsertParams(key=key, value=value)) for s in self.sides]
        assert results[0].prefix_len == results[1].prefix_len
        paths = [
            self.indices(s, r.last_device_node, len(key))
            for s, r in zip(self.sides, results, strict=True)
        ]
        assert paths[0] == paths[1]

    def match(self, tokens: list[int]) -> None:
        params = self.api.MatchPrefixParams(key=self.key(tokens))
        results = [s.cache.match_prefix(params) for s in self.sides]
        length = results[0].device_prefix_len
        assert length == results[1].device_prefix_len
        paths = [
            self.indices(s, r.last_device_node, length)
            for s, r in zip(self.sides, results, strict=True)
        ]
        assert paths[0] == paths[1]
        self.fresh.append((results[0].last_device_node, results[1].last_device_node))

    def lock(self, which: int) -> None:
        nodes = self.fresh[which % len(self.fresh)]
        receipts = [s.cache.lock(node) for s, node in zip(self.sides, nodes, strict=True)]
        self.locks.append((receipts[0], receipts[1]))

    def unlock(self, which: int) -> None:
        receipts = self.locks.pop(which % len(self.locks))
        deltas = [
            s.cache.dec_lock_ref(r.node, r.receipt).delta
            for s, r in zip(self.sides, receipts, strict=True)
        ]
        assert deltas[0] == deltas[1]

    def evict(self, num_tokens: int) -> None:
        evictable = self.a.cache.evictable_size()
        params = self.api.EvictParams(num_tokens=num_tokens)
        counts = [s.cache.evict(params).num_tokens_evicted for s in self.sides]
        self.fresh.clear()  # a scheduler locks what it matched before it allocates
        if num_tokens >= evictable:
            assert counts[0] == counts[1] == evictable
            return
        # SGLang frees whole nodes (num_tokens or more); prefixkv the pages that cover it.
        wanted = -(-num_tokens // self.page_size) * self.page_size
        assert counts[1] == min(wanted, evictable) and counts[0] >= num_tokens
        freed = [set(s.allocator.freed) for s in self.sides]
        assert len(freed[1]) == counts[1] and len(freed[0]) == counts[0]
        # Then both free the rest: together, exactly the same slots (``compare`` checks).
        params = self.api.EvictParams(num_tokens=evictable)
        rest = [s.cache.evict(params).num_tokens_evicted for s in self.sides]
        assert counts[0] + rest[0] == counts[1] + rest[1] == evictable

    def reset(self) -> None:
        assert not self.locks and not self.a.reqs
        for side in self.sides:
            side.cache.reset()
        self.fresh.clear()

    # --- requests ----------------------------------------------------------------------------

    def start(self, tokens: list[int]) -> None:
        """A new request: match its prompt, lock the match, fill its row."""
        row = next(self._rows)
        if row >= ROWS:
            return
        own = self.slots(len(tokens))
        lengths = []
        for side in self.sides:
            req = FakeReq(array("q", tokens), KvInfo(row), list(tokens))
            result = side.cache.match_prefix(self.api.MatchPrefixParams(key=self.key(tokens)))
            req.prefix_len = length = result.device_prefix_len
            req.last_node = result.last_device_node
            req.lock = side.cache.lock(req.last_node)
            req.kv.cache_protected_len = length
            side.pool.req_to_token[row, :length] = side.cache.path_device_indices(req.last_node)
            side.pool.req_to_token[row, length : len(tokens)] = own[length:]
            side.reqs[row] = req
            lengths.append(length)
        assert lengths[0] == lengths[1]

    def checkpoint(self, which: int, generated: list[int]) -> None:
        """A running request decodes ``generated`` tokens, then checkpoints all of them."""
        if not self.a.reqs:
            return
        row = sorted(self.a.reqs)[which % len(self.a.reqs)]
        start = len(self.a.reqs[row].full_untruncated_fill_ids)
        if start + len(generated) > ROW:
            return
        own = self.continue_row(self.a.pool.req_to_token[row], start, len(generated))
        for side in self.sides:
            req = side.reqs[row]
            req.full_untruncated_fill_ids.extend(generated)
            side.pool.req_to_token[row, start : start + len(generated)] = own
            side.cache.checkpoint(req, up_to=len(req.full_untruncated_fill_ids))
        reqs = [s.reqs[row] for s in self.sides]
        assert reqs[0].kv.cache_protected_len == reqs[1].kv.cache_protected_len
        end = len(reqs[0].full_untruncated_fill_ids)
        assert torch.equal(self.a.pool.req_to_token[row, :end], self.b.pool.req_to_token[row, :end])

    def finish(self, which: int) -> None:
        """Release a request: its tree lock, and the row's slots the tree does not own."""
        if not self.a.reqs:
            return
        row = sorted(self.a.reqs)[which % len(self.a.reqs)]
        deltas = []
        for side in self.sides:
            req = side.reqs.pop(row)
            # (the scheduler then frees the row past cache_protected_len: not the caches')
            deltas.append(side.cache.dec_lock_ref(req.lock.node, req.lock.receipt).delta)
        assert deltas[0] == deltas[1]

    # --- state ------------------------------------------------------------------------------

    def compare(self) -> None:
        a, b = self.a.cache, self.b.cache
        assert a.evictable_size() == b.evictable_size()
        assert a.protected_size() == b.protected_size()
        assert a.total_size() == b.total_size() == len(b.index) * self.page_size
        assert sorted(self.a.allocator.take_freed()) == sorted(self.b.allocator.take_freed())
        assert normalized_events(a.take_events()) == normalized_events(b.take_events())
        b.index.check_invariants()
