"""SerialRunner: one request at a time, each in a contiguous KV buffer (the fallback for
models the batch runner cannot run, and the executable reference it is compared with).

Per request, over the cache's BlockStore protocol as the batch runner is: ``open`` a table
over the longest cached prefix, copy its blocks into a workspace (see
:mod:`prefixkv.engine.workspace`), prefill only the rest (at least the last prompt token,
whose logits start decoding), decode in place; then ``reserve`` private blocks for the full
blocks of prompt + generated tokens, copy them there once, ``commit``; and ``close`` the
table whatever happens. The KV is copied twice per request (in, out), never per token.

Every request goes through :meth:`SerialRunner.submit` (a thread of the runner's own, in
arrival order, as the server uses it) or :meth:`SerialRunner.steps` (on the caller's thread,
as ``Engine.generate``/``stream`` do); either way its results go to a Sink.

Thread-safety: ``submit``, ``drain``, ``cancel_running``, ``stop`` and the counters may be
called from any thread; ``steps`` too (model calls are serialized by ``model_lock``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Hashable
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import DynamicCache

from prefixkv.cache.table import BlockTable
from prefixkv.engine.batch.records import StepReport
from prefixkv.engine.decoding import Decoding
from prefixkv.engine.request import Request
from prefixkv.engine.role import RequestCancelled, Sink, wait_until
from prefixkv.engine.workspace import Workspace, WorkspacePool
from prefixkv.threads import compute_on, current_threads
from prefixkv.tokens import TokenBytes, as_token_bytes, token_count

if TYPE_CHECKING:
    from prefixkv.engine.engine import Engine


__all__ = ["SerialRunner", "model_ids"]


class SerialRunner:
    """Serves Requests one at a time on an engine's model and cache. ``on_step`` is told
    of every forward pass (one sequence; on the thread that ran it)."""

    def __init__(
        self, engine: Engine, on_step: Callable[[StepReport], None] = lambda report: None
    ) -> None:
        self.engine, self.on_step = engine, on_step
        self.workspaces = WorkspacePool(engine.layout, engine.device)
        self._queue: queue.Queue[tuple[Request, Sink] | None] = queue.Queue()
        self._current: Sink | None = None
        self._lock = threading.Lock()
        self._accepting = True
        self._stopping = False  # cancel_running: the running request and any later one stop
        self._thread: threading.Thread | None = None

    # --- any thread ---------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return self._queue.qsize()

    @property
    def num_running(self) -> int:
        return int(self._current is not None)

    def submit(self, request: Request, sink: Sink) -> None:
        """Queue ``request``; results go to ``sink``. RequestCancelled when the runner
        stopped accepting."""
        with self._lock:
            if not self._accepting:
                raise RequestCancelled("the server is shutting down")
            self._queue.put((request, sink))

    def start(self, threads: int | None = None) -> None:
        """Serve the queue on a thread of the runner's own; ``threads``: the cores its torch
        ops use (default: the calling thread's; see :mod:`prefixkv.threads`). A runner
        stopped before accepts requests again (the engine's serial runner may serve one
        app after another)."""
        if threads is None:
            threads = current_threads()
        with self._lock:
            self._accepting, self._stopping = True, False
        # daemon: a generation stuck in the model must not keep a stopping process alive.
        self._thread = threading.Thread(
            target=self._loop, args=(threads,), name="prefixkv-worker", daemon=True
        )
        self._thread.start()

    def drain(self) -> None:
        """Stop accepting; every waiting request is finished as skipped at once."""
        with self._lock:
            self._accepting = False
            drained = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._queue.task_done()
                if item is not None:
                    drained.append(item[1])
        for sink in drained:
            sink.finish("skipped", RequestCancelled("the server is shutting down"))

    def cancel_running(self) -> None:
        """The running request stops before its next token (its sink reports stopped)."""
        self._stopping = True

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted request finished; False after ``timeout`` seconds."""
        # unfinished_tasks: queued, or taken and not finished
        return wait_until(lambda: not self._queue.unfinished_tasks, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        self.drain()
        self.cancel_running()
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    # --- the runner's thread --------------------------------------------------------------

    def _loop(self, threads: int) -> None:
        compute_on(threads)
        while True:
            item = self._queue.get()
            try:
                if item is None:  # stop()
                    return
                self._current = item[1]
                self.serve(*item)
            finally:
                self._current = None
                self._queue.task_done()  # wait_idle counts what is not done yet

    def serve(self, request: Request, sink: Sink) -> None:
        """Run ``request`` to its end on this thread, checking ``sink.cancelled`` before
        each token; always ends with ``sink.finish``. Never raises: a failed request's error
        goes to its sink, whose owner reports it (the server logs it, throttled)."""
        if sink.cancelled:
            sink.finish("skipped", RequestCancelled("the request was cancelled while queued"))
            return
        steps = self.steps(request, sink, time.perf_counter())
        try:
            for _ in steps:
                if sink.cancelled or self._stopping:
                    sink.finish("stopped", RequestCancelled("the request was cancelled"))
                    return
            sink.finish("completed")
        except Exception as exc:
            sink.finish("failed", exc)
        finally:
            steps.close()  # a request stopped early releases its cached blocks here

    # --- one request ----------------------------------------------------------------------

    def steps(self, request: Request, sink: Sink, start: float) -> Generator[None, None, None]:
        """Generate for ``request``: text deltas (and TokenLogprobs when asked for), then
        the Completion (times from ``start``,
        a perf_counter), go to ``sink.deliver``; yields before each further token, so its
        driver may stop between tokens by closing it (which releases the cached blocks).
        Raises what the model raises (nothing is cached then); never calls ``sink.finish``."""
        engine, store = self.engine, self.engine.cache
        prompt = model_ids(request.ids)
        count = len(prompt)
        workspace = self.workspaces.acquire(count + request.max_tokens)
        table = None
        try:
            table = store.open(request.ids, request.namespace)
            kv, reuse = self.restore(table, workspace, count)
            logits = self._forward(prompt[reuse:], reuse, kv)
            decoding = Decoding(request, engine.tokenizer, engine.eos_ids)
            while True:
                decoding.accept(logits, sink)
                if decoding.done:
                    break
                yield
                position = count + len(decoding.generated) - 1
                logits = self._forward(prompt.new_tensor(decoding.generated[-1:]), position, kv)
            # The KV covers every token fed to the model: the prompt and all generated tokens
            # but the last one.
            self._keep(
                table, TokenBytes(request.ids + as_token_bytes(decoding.generated[:-1])), workspace
            )
            sink.deliver(decoding.completion(count, reuse, start))
        finally:
            if table is not None:
                store.close(table)
            self.workspaces.release(workspace)

    def restore(
        self, table: BlockTable, workspace: Workspace, prompt_len: int
    ) -> tuple[DynamicCache, int]:
        """Copy the table's cached prefix into ``workspace``; return the model cache over it
        and how many prompt tokens it holds (never all: the last one is recomputed for its
        logits)."""
        if table.indexed:
            pool = self.engine.cache.pool
            assert pool is not None  # a table with blocks has a pool
            pool.gather_into(table.blocks[: table.indexed], workspace.data)
        reuse = min(table.cached_tokens, prompt_len - 1)
        return workspace.as_cache(self.engine.model.config, reuse), reuse

    def _keep(self, table: BlockTable, fed: TokenBytes, workspace: Workspace) -> None:
        """Cache the full blocks of ``fed`` (whose KV ``workspace`` holds) past the table's
        indexed prefix: as many as the store gives room for, copied into the table's private
        blocks, then committed."""
        store = self.engine.cache
        size = store.block_size
        first = table.indexed
        held = store.reserve(table, token_count(fed) // size * size)
        if held <= first:
            return  # nothing new, or no room (a NullCache keeps nothing)
        pool = store.pool
        assert pool is not None  # blocks were given
        pool.write(table.blocks[first:held], workspace.kv(held * size), first * size)
        store.commit(table, fed)

    def next_token_logits(self, ids: TokenBytes, namespace: Hashable) -> tuple[torch.Tensor, int]:
        """``[vocab]`` logits for the token after ``ids`` and the prompt tokens reused from
        the cache. Stores nothing."""
        store = self.engine.cache
        prompt = model_ids(ids)
        workspace = self.workspaces.acquire(len(prompt))
        try:
            table = store.open(ids, namespace)
            try:
                kv, reuse = self.restore(table, workspace, len(prompt))
            finally:
                store.close(table)
            return self.engine.forward(prompt[reuse:], reuse, kv), reuse
        finally:
            self.workspaces.release(workspace)

    def _forward(self, ids: torch.Tensor, position: int, kv: DynamicCache) -> torch.Tensor:
        """``Engine.forward``, reported to ``on_step``."""
        begun = time.perf_counter()
        logits = self.engine.forward(ids, position, kv)
        waiting = self.num_waiting
        self.on_step(StepReport(1, len(ids), 1, time.perf_counter() - begun, 1, waiting, 0))
        return logits


def model_ids(ids: TokenBytes) -> torch.Tensor:
    """The model's input form of canonical ids: ``[n]`` int64 (a copy, in C)."""
    return torch.from_numpy(np.frombuffer(ids, dtype=np.uint32).astype(np.int64))
