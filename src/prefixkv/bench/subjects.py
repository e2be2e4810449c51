"""The prefix indexes the index benchmark compares, behind one small interface."""

from __future__ import annotations

import itertools
import sys
from array import array
from typing import Any, Protocol

from prefixkv.index.reference import ReferenceIndex
from prefixkv.index.tree import PrefixIndex
from prefixkv.tokens import as_token_bytes


class Subject(Protocol):
    name: str
    can_lock: bool
    can_evict: bool

    def native(self, tokens: list[int]) -> Any:
        """The form an engine would already hold the prompt in (untimed); ``insert`` and
        ``match`` accept it as well as a list."""
        ...

    def insert(self, tokens: Any) -> None: ...
    def match(self, tokens: Any) -> int: ...
    def pin(self, tokens: list[int]) -> Any:
        """Untimed preparation for ``pin_unpin``: whatever a pin needs (a match, a node)."""
        ...

    def pin_unpin(self, handle: Any) -> None: ...
    def evict(self, num_blocks: int) -> int: ...


class OurIndex:
    """prefixkv.PrefixIndex; values are unique ints, like KV block ids."""

    can_lock = can_evict = True

    def __init__(self, block_size: int, name: str = "prefixkv", index: Any = None) -> None:
        self.name = name
        self.index = index if index is not None else PrefixIndex(block_size)
        self.block_size = block_size
        self._ids = itertools.count()

    def native(self, tokens: list[int]) -> Any:
        # prefixkv's canonical form (as_token_bytes); the [list] rows include the conversion.
        return as_token_bytes(tokens)

    def insert(self, tokens: Any) -> None:
        start = next(self._ids) * 65536  # disjoint value ranges per insert, no per-block work
        count = len(tokens) // (self.block_size * (4 if isinstance(tokens, bytes) else 1))
        self.index.insert(tokens, range(start, start + count))

    def match(self, tokens: Any) -> int:
        return int(self.index.match(tokens).num_tokens)

    def pin(self, tokens: list[int]) -> Any:
        return self.index.match(tokens)

    def pin_unpin(self, handle: Any) -> None:
        self.index.pin(handle)
        self.index.unpin(handle)

    def evict(self, num_blocks: int) -> int:
        return len(self.index.evict(num_blocks))


class SGLangSubject:
    """SGLang's classic RadixCache, driven as its scheduler drives it (see peers.py)."""

    can_lock = can_evict = True

    def __init__(self, page_size: int) -> None:
        from prefixkv.bench.peers.adapters import SGLangRadix

        self.peer = SGLangRadix(page_size=page_size)
        self.name = f"sglang(page={page_size})"

    def native(self, tokens: list[int]) -> Any:
        return array("q", tokens)  # what SGLang's scheduler keeps per request

    def insert(self, tokens: Any) -> None:
        self.peer.insert(tokens)  # array("q", an array) is one memcpy

    def match(self, tokens: Any) -> int:
        if isinstance(tokens, array):
            return int(self.peer.match_array(tokens))
        return int(self.peer.match(tokens))

    def pin(self, tokens: list[int]) -> Any:
        node = self.peer.lock(tokens)
        self.peer.unlock(node)
        return node

    def pin_unpin(self, handle: Any) -> None:
        self.peer.cache.inc_lock_ref(handle)
        self.peer.cache.dec_lock_ref(handle)

    def evict(self, num_blocks: int) -> int:
        return int(self.peer.evict(num_blocks * 16))


class VLLMSubject:
    """vLLM v1: hash the request's blocks, then probe its block-hash map (no tree)."""

    can_lock = can_evict = False

    def __init__(self, block_size: int, hash_name: str) -> None:
        from prefixkv.bench.peers.adapters import VLLMHashing

        self.peer = VLLMHashing(block_size, hash_name, num_blocks=1 << 20)
        self.name = f"vllm({hash_name})"

    def native(self, tokens: list[int]) -> Any:
        # vLLM hashes a request's blocks once on arrival; its scheduler then only looks up.
        return self.peer.request(tokens)

    def insert(self, tokens: Any) -> None:
        if isinstance(tokens, list):
            self.peer.insert(tokens)
        else:
            self.peer.insert_request(tokens)

    def match(self, tokens: Any) -> int:
        if isinstance(tokens, list):
            return int(self.peer.match(tokens))
        return int(self.peer.match_hashes(tokens.block_hashes, len(tokens.all_token_ids)))

    def pin(self, tokens: list[int]) -> Any:
        raise NotImplementedError

    def pin_unpin(self, handle: Any) -> None:
        raise NotImplementedError

    def evict(self, num_blocks: int) -> int:
        raise NotImplementedError


def make_subjects(peers: list[str], block_size: int) -> list[Subject]:
    """prefixkv first, then each requested peer that can be built; notes on stderr."""
    subjects: list[Subject] = [OurIndex(block_size)]
    builders: list[tuple[str, Any]] = []
    if "dict" in peers:
        builders.append(
            ("dict", lambda: OurIndex(block_size, "dict-ref", ReferenceIndex(block_size)))
        )
    if "sglang" in peers:
        builders += [
            ("sglang", lambda: SGLangSubject(block_size)),
            ("sglang", lambda: SGLangSubject(1)),
        ]
    if "vllm" in peers:
        builders += [
            ("vllm", lambda: VLLMSubject(block_size, "sha256")),
            ("vllm", lambda: VLLMSubject(block_size, "xxhash")),
        ]
    for label, build in builders:
        try:
            subjects.append(build())
        except Exception as exc:  # a missing optional peer must not stop the benchmark
            print(f"# {label}: unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
    return subjects
