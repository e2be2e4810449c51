"""The request log (``prefixkv serve --request-log FILE``): one JSON line per finished
generation, for ``prefixkv simulate`` to replay (see :mod:`prefixkv.whatif`).

A line holds what a capacity study needs and nothing a reader could turn back into text:
the finish time, the tenant (the digest of its API key, :func:`prefixkv.server.auth.tenant_of`,
never the key), the namespace as its root name (a hash), the 128-bit chained names of the
prompt's full blocks and of the further blocks the request cached while generating (the
names the tiers use, :mod:`prefixkv.tiers.naming`), token counts, TTFT, end-to-end time and
the outcome. Never a token id, never text (``tests/server/test_request_log.py`` greps a log
for both).

Names are keyed when the tier key is (a tiered cache's own namer); otherwise they are
unkeyed XXH3 over a fingerprint of the model's name: whoever reads the log and guesses a
whole prompt can confirm the guess, as with a shared tier without a key. Keep the file
private (it is created mode 0600).

Writing is off the serving path: the runner thread that finishes a job only puts a small
record (references to the job's token bytes, no copy) on a bounded queue; one writer thread
names the blocks, formats the line and writes it. When the disk falls behind and the queue
is full, further records are *dropped* (counted in ``dropped``, with a warning per power of
two; lines the writer failed to write, e.g. on a full disk, in ``failed``; both in the
Prometheus gauge ``prefixkv_request_log_dropped``): serving never waits for the log, and a
replay of a log with drops sees less traffic than the server did.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prefixkv.cache.protocol import BlockStore
from prefixkv.cache.tenants import tenant_of
from prefixkv.server.scheduler import Job
from prefixkv.tiers.naming import BlockNamer, fingerprint_of
from prefixkv.tiers.tiered import TieredCache
from prefixkv.tokens import TOKEN_BYTES, TokenBytes, as_token_bytes

log = logging.getLogger("prefixkv.server")

DEFAULT_MAX_PENDING = 10_000
"""Records waiting for the writer before new ones are dropped (each holds references to
its prompt's token bytes: at most a few MB of prompts waiting, not copies)."""


@dataclass(frozen=True)
class Finished:
    """What the runner thread hands the writer: the job's facts, no formatting done."""

    finished: float
    """Unix time at the finish."""
    endpoint: str
    namespace: Hashable
    prompt: TokenBytes
    output: tuple[int, ...] | None
    """The generated ids (None when the job ended without a completion)."""
    cached_tokens: int | None
    ttft: float | None
    e2e: float | None
    outcome: str


class ModelNamer(BlockNamer):
    """The log's namer without tiers: unkeyed, over a fingerprint of the model's name, so
    whoever knows the name and the tokenizer can name a prompt's blocks as the log did
    (``prefixkv explain --log``)."""

    def __init__(self, model: str, block_size: int) -> None:
        super().__init__(fingerprint_of(b"prefixkv request log", model.encode()), block_size)


def namer_for(cache: BlockStore, model: str) -> BlockNamer:
    """The tiers' own namer over a tiered cache (keyed with the tier key, if any), else a
    :class:`ModelNamer` of ``model``'s name: no weights hashed, no tier needed."""
    if isinstance(cache, TieredCache):
        return cache.namer
    return ModelNamer(model, cache.block_size)


def finished_of(job: Job) -> Finished:
    """The record of ``job``, taken on the thread that finished it. O(1): no copies."""
    done = job.completion
    first = job.first_output
    end = job.finished
    return Finished(
        finished=time.time(),
        endpoint=job.endpoint,
        namespace=job.request.namespace,
        prompt=job.request.ids,
        output=None if done is None else done.token_ids,
        cached_tokens=None if done is None else done.cached_tokens,
        ttft=None if first is None else first - job.arrived,
        e2e=None if end is None else end - job.arrived,
        outcome=job.outcome,
    )


def line_of(record: Finished, namer: BlockNamer, block_bytes: int) -> dict[str, Any]:
    """The JSON object of one line. ``blocks``: names of the prompt's full blocks;
    ``output_blocks``: names of the full blocks after them whose KV the request computed
    (the prompt and every generated token but the last), which the server cached too."""
    size = namer.block_size
    prompt_tokens = len(record.prompt) // TOKEN_BYTES
    fed = bytes(record.prompt)
    if record.output:
        fed += as_token_bytes(record.output[:-1])
    root = namer.root(record.namespace)
    names = namer.extend(root, fed, 0, len(fed) // TOKEN_BYTES // size)
    in_prompt = prompt_tokens // size
    tenant = tenant_of(record.namespace)
    return {
        "time": round(record.finished, 6),
        "tenant": tenant if isinstance(tenant, str) else None,
        "namespace": root.hex(),
        # (names a ModelNamer gave can be recomputed offline; the tiers' cannot)
        "naming": "model" if isinstance(namer, ModelNamer) else "tiers",
        "endpoint": record.endpoint,
        "block_size": size,
        "block_bytes": block_bytes,
        "blocks": [name.hex() for name in names[:in_prompt]],
        "output_blocks": [name.hex() for name in names[in_prompt:]],
        "prompt_tokens": prompt_tokens,
        "cached_tokens": record.cached_tokens,
        "output_tokens": None if record.output is None else len(record.output),
        "ttft": _seconds(record.ttft),
        "e2e": _seconds(record.e2e),
        "outcome": record.outcome,
    }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class RequestLog:
    """Appends one line per finished job to ``path`` from a writer thread of its own.
    ``observe`` is the scheduler's ``on_finish`` hook (any thread, never blocks); ``close``
    writes what is queued and stops the thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        namer: BlockNamer,
        block_bytes: int,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.path = Path(path)
        self.namer = namer
        self.block_bytes = block_bytes
        self.written = 0
        self.dropped = 0  # by observe (the runner's thread) only
        self.failed = 0  # by the writer thread only
        self._queue: queue.Queue[Finished] = queue.Queue(max_pending)
        self._stop = threading.Event()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file: TextIO = os.fdopen(descriptor, "a", encoding="utf-8")
        self._thread = threading.Thread(target=self._run, name="prefixkv-request-log", daemon=True)
        self._thread.start()

    def observe(self, job: Job) -> None:
        """Queue ``job``'s record; drop it (counted) when the writer is ``max_pending``
        records behind."""
        try:
            self._queue.put_nowait(finished_of(job))
        except queue.Full:
            self.dropped += 1
            if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, ...: bounded noise
                log.warning(
                    "request log %s is behind: %d records dropped so far", self.path, self.dropped
                )

    def close(self, timeout: float = 10.0) -> None:
        """Write the queued records (for up to ``timeout`` seconds) and stop. Idempotent."""
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._file.close()

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                record = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                line = json.dumps(line_of(record, self.namer, self.block_bytes))
                self._file.write(line + "\n")
                self.written += 1
                if self._queue.empty():
                    self._file.flush()  # a reader sees every line once the server is idle
            except Exception:  # a full disk: the line is lost, the server goes on
                log.exception("writing the request log failed")
                self.failed += 1
        self._file.flush()
