"""llama.cpp (llama-cpp-python) with its LlamaRAMCache, as a TTFT peer on the same GGUF.

Optional: llama-cpp-python compiles llama.cpp from source (5-15 minutes here), so it is not a
dependency and CI never installs it. To enable it::

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        pip install --no-deps llama-cpp-python==0.3.36

(its default native build segfaulted in ``decode`` on an AVX-512 machine here).
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any


def available() -> str | None:
    """None when llama_cpp imports, else the reason it does not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return f"llama-cpp-python is not installed ({exc})"
    return None


def rag_ttft(
    gguf: Path, requests: list[list[dict[str, str]]], threads: int, cache_bytes: int = 2 << 30
) -> list[float]:
    """TTFT in seconds per request (a completion of one token, greedy), in order, through
    ``Llama.create_chat_completion`` with a LlamaRAMCache; the chat template comes from the
    GGUF itself."""
    llama_cpp: Any = importlib.import_module("llama_cpp")
    llm = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=4096, n_threads=threads, n_batch=512, verbose=False
    )
    llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=cache_bytes))
    llm.create_chat_completion(
        messages=[{"role": "user", "content": "Hello"}], max_tokens=1
    )  # warm-up
    out = []
    for messages in requests:
        start = time.perf_counter()
        llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
        out.append(time.perf_counter() - start)
    return out
