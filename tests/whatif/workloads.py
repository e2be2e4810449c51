"""Request logs for the replay tests: chains of block names drawn from a small tree of
"documents", so that requests share prefixes, diverge, and repeat."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from prefixkv.whatif.records import LoggedRequest

BLOCK = 4


def chain(symbols: list[int], root: bytes = b"root") -> tuple[bytes, ...]:
    """Chained 16-byte names, like the tiers' (a name stands for its whole prefix)."""
    names, parent = [], root
    for symbol in symbols:
        parent = hashlib.blake2b(parent + bytes([symbol]), digest_size=16).digest()
        names.append(parent)
    return tuple(names)


@st.composite
def requests(draw: st.DrawFn) -> LoggedRequest:
    symbols = draw(st.lists(st.integers(0, 2), max_size=7))
    prompt_blocks = draw(st.integers(0, len(symbols)))
    tail = draw(st.integers(0, BLOCK - 1))
    names = chain(symbols, draw(st.sampled_from([b"a", b"b"])))
    prompt_tokens = prompt_blocks * BLOCK + tail
    if prompt_tokens == 0:
        prompt_tokens, tail = 1, 1
    output_blocks = len(symbols) - prompt_blocks
    # fed = prompt + output - 1 tokens reaches exactly the logged output blocks
    output_tokens = output_blocks * BLOCK - tail + 1 + draw(st.integers(0, BLOCK - 1))
    output_tokens = max(output_tokens, 0)
    return LoggedRequest(
        names[:prompt_blocks], names[prompt_blocks:], prompt_tokens, 0, output_tokens, 0.01,
        BLOCK, 1000,
    )  # fmt: skip


def write_log(path: Path, logged: list[LoggedRequest]) -> None:
    """``logged`` as the server's request log writes it."""
    with path.open("w") as out:
        for r in logged:
            line: dict[str, Any] = {
                "time": 0.0, "tenant": "t", "namespace": "00" * 16, "endpoint": "chat",
                "block_size": r.block_size, "block_bytes": r.block_bytes,
                "blocks": [n.hex() for n in r.blocks],
                "output_blocks": [n.hex() for n in r.output_blocks],
                "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens,
                "output_tokens": r.output_tokens, "ttft": r.ttft, "e2e": r.ttft,
                "outcome": "completed",
            }  # fmt: skip
            out.write(json.dumps(line) + "\n")
