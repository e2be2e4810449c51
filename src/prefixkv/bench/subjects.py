"""The prefix indexes the index benchmark compares, behind one small interface.

prefixkv's :class:`OurIndex` is defined here; each peer's adapter in :mod:`prefixkv.bench.peers`
implements :class:`Subject` itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol

from prefixkv.bench.peers.sglang import SGLangRadix
from prefixkv.bench.peers.vllm import VLLMHashing
from prefixkv.index.reference import ReferenceIndex
from prefixkv.index.tree import PrefixIndex
from prefixkv.tokens import TOKEN_BYTES, as_token_bytes


class Subject(Protocol):
    """One system under test. Token arguments are a Python list, an ``array('q')`` or what
    ``native`` returned; each call converts what it needs itself, inside the call."""

    name: str
    can_pin: bool
    can_evict: bool

    def native(self, tokens: list[int]) -> Any:
        """The form the system keeps a request in (made before the clock starts)."""
        ...

    def insert(self, tokens: Any) -> None:
        """Cache the full blocks of ``tokens`` (values: fresh block or KV ids)."""
        ...

    def match(self, tokens: Any) -> int:
        """Tokens of the longest cached prefix of ``tokens``."""
        ...

    def pin(self, tokens: list[int]) -> Any:
        """Untimed preparation for ``pin_unpin``: what a pin takes (a match, a node)."""
        ...

    def pin_unpin(self, handle: Any) -> None:
        """Pin, then unpin, what ``pin`` prepared."""
        ...

    def evict(self, num_blocks: int) -> int:
        """One eviction call for ``num_blocks`` blocks; returns the tokens freed."""
        ...


class OurIndex:
    """A :class:`~prefixkv.index.tree.PrefixIndex` (or the plain-dict reference) whose values
    are KV block ids.

    ``insert`` takes its block ids as ``PrefixKVCache`` does from its ``BlockPool``: a slice of
    a list of existing ints (the pool's free list), made inside the call; SGLang's subject
    likewise slices its KV indices off a preallocated tensor, as SGLang's allocator does.
    The ids repeat from one insert to the next: values are opaque to the index.
    """

    can_pin = can_evict = True

    def __init__(self, block_size: int, name: str = "prefixkv", index: Any = None) -> None:
        self.name = name
        self.index = index if index is not None else PrefixIndex(block_size)
        self.block_size = block_size
        self._block_ids = list(range(1 << 16))  # up to 1M tokens per insert at block 16

    def native(self, tokens: list[int]) -> Any:
        return as_token_bytes(tokens)  # the canonical form, TokenBytes

    def insert(self, tokens: Any) -> None:
        length = len(tokens) // TOKEN_BYTES if isinstance(tokens, bytes) else len(tokens)
        self.index.insert(tokens, self._block_ids[: length // self.block_size])

    def match(self, tokens: Any) -> int:
        return int(self.index.match(tokens).num_tokens)

    def pin(self, tokens: list[int]) -> Any:
        return self.index.match(tokens)

    def pin_unpin(self, handle: Any) -> None:
        self.index.pin(handle)
        self.index.unpin(handle)

    def evict(self, num_blocks: int) -> int:
        return len(self.index.evict(num_blocks)) * self.block_size


def make_subjects(peers: list[str], block_size: int) -> list[Subject]:
    """prefixkv first, then each requested peer that can be built (``"dict"``: the reference
    model; ``"sglang"``: the classic tree at page size ``block_size`` and 1; ``"sglang-rust"``:
    SGLang's default tree and ``"prefixkv-sglang"`` prefixkv's SGLang backend, each at page
    size ``block_size`` and 1; ``"vllm"``:
    sha256 and xxhash).
    A peer that cannot be built is skipped with a note on stderr."""
    builders: dict[str, list[Callable[[], Subject]]] = {
        "dict": [lambda: OurIndex(block_size, "dict-ref", ReferenceIndex(block_size))],
        "sglang": [
            lambda: SGLangRadix(block_size, block_size),
            lambda: SGLangRadix(1, block_size),
        ],
        # SGLang 0.5.23's default tree (Rust TreeCore) and prefixkv's SGLang backend, both
        # through SGLang's own calls (RadixKey(array('q')), page size block_size and 1).
        "sglang-rust": [
            lambda: SGLangRadix(block_size, block_size, "unified"),
            lambda: SGLangRadix(1, block_size, "unified"),
        ],
        "prefixkv-sglang": [
            lambda: SGLangRadix(block_size, block_size, "prefixkv"),
            lambda: SGLangRadix(1, block_size, "prefixkv"),
        ],
        "vllm": [
            lambda: VLLMHashing(block_size, "sha256", num_blocks=1 << 20),
            lambda: VLLMHashing(block_size, "xxhash", num_blocks=1 << 20),
        ],
    }
    subjects: list[Subject] = [OurIndex(block_size)]
    for peer in peers:
        for build in builders[peer]:
            try:
                subjects.append(build())
            except Exception as exc:  # a missing optional peer must not stop the benchmark
                print(f"# {peer}: unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
                break
    return subjects
