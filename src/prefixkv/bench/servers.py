"""The servers ``prefixkv bench serve`` compares: a table of settings, which of them this
machine can run, and one server process at a time.

``prefixkv serve`` runs as ``python -m prefixkv.cli serve``; ``transformers serve
--continuous-batching`` runs on the folder prefixkv converted the model into (fp32
safetensors), offline. A setting whose flags the installed server's ``--help`` does not list
is skipped with its reason, so the table can name flags that are still being written.
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

PREFIXKV = "prefixkv"
TRANSFORMERS = "transformers"
NAMES = (
    "prefixkv-serial",
    "prefixkv",
    "prefixkv-fp32",
    "prefixkv-nocache",
    "tf-cb",
    "tf-cb-matched",
)
# transformers serve refuses to start without these (its is_serve_available()).
_TRANSFORMERS_SERVE_NEEDS = ("fastapi", "uvicorn", "pydantic", "openai")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # PREFIXKV or TRANSFORMERS
    flags: tuple[str, ...]
    description: str
    max_running: int | None = None  # most sequences in one decode step; None: the server's own


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
        Setting("prefixkv-fp32", PREFIXKV, ("--weights", "fp32"), "weights streamed as fp32"),
        Setting("prefixkv-nocache", PREFIXKV, ("--no-prefix-cache",), "prefix cache off"),
        Setting("tf-cb", TRANSFORMERS, ("--continuous-batching",), "transformers defaults"),
        Setting(
            "tf-cb-matched", TRANSFORMERS, ("--continuous-batching", *matched), "same KV bytes"
        ),
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


def help_text(kind: str) -> tuple[str | None, str]:
    """(``serve --help`` output, "") or (None, why the server cannot run here)."""
    command = server_command(kind)
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


def skip_reason(setting: Setting, helps: dict[str, tuple[str | None, str]]) -> str | None:
    """Why ``setting`` cannot run with the servers installed; None when it can."""
    text, why = helps[setting.kind]
    if text is None:
        return why
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


def read_config(folder: Path) -> dict[str, object]:
    config: dict[str, object] = json.loads((folder / "config.json").read_text())
    return config


class ServerProcess:
    """One server of a setting, in a subprocess on a free loopback port, logging to a file."""

    def __init__(self, setting: Setting, plan: Plan, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        command = server_command(setting.kind)
        assert command is not None, "skip_reason() rules out servers that are not installed"
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        if setting.kind == PREFIXKV:
            command += ["--model", plan.model, "--cache-bytes", str(plan.cache_bytes)]
            command += ["--block-size", str(plan.block_size), "--max-queue", str(plan.max_queue)]
            command += setting.flags
            self.model = plan.model
        else:
            # The folder is pinned, so requests must name it exactly as given here
            # (its /v1/models scans the hub cache and fails offline).
            self.model = str(plan.folder)
            command += [*setting.flags, self.model]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=out, env=server_env(setting.kind)
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
        """The process's peak resident memory in bytes (Linux VmHWM); None where unknown."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        return None if match is None else int(match.group(1)) * 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
