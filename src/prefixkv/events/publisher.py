"""KVEventPublisher: the cache's and the tiers' block events, published over ZeroMQ as
vLLM's ``ZmqEventPublisher`` publishes them, so vLLM-event consumers can subscribe as is.

Wire (vllm 0.32): a PUB socket sends each batch as three frames ``[topic, seq, payload]``:
``seq`` an 8-byte big-endian counter from 0, ``payload`` a msgpack
:class:`~prefixkv.events.wire.KVEventBatch`. A subscriber that sees a gap in ``seq`` asks a
ROUTER socket (``replay_endpoint``) with a REQ/DEALER message ``[start_seq]`` (8 bytes,
big-endian) and gets back every batch still kept with ``seq >= start_seq`` as ``[topic,
seq, payload]``, then ``[b"", -1 as 8 signed big-endian bytes, b""]``. The first batch
after start is ``AllBlocksCleared``.

Never in the way of a request: the cache and the tiers only append a small record to a
bounded queue (:meth:`report`, O(1), no lock of ours); naming, encoding and sending run on
this publisher's thread. A full queue drops the record (``dropped_reports``): a subscriber
then misses that change; the replay buffer keeps the last ``replay_batches`` batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import NamedTuple

import msgspec
import zmq

from prefixkv.events.sinks import RamSink, TierSink
from prefixkv.events.translate import Cleared, Report, Translator
from prefixkv.events.wire import KVEventBatch
from prefixkv.threads import current_threads, helper_thread
from prefixkv.tiers.naming import BlockNamer

log = logging.getLogger("prefixkv.events")
END_OF_REPLAY = (-1).to_bytes(8, "big", signed=True)
MAX_BATCH_REPORTS = 4096
"""Reports folded into one batch at most (a batch is one message and one replay entry)."""


class PublisherCounts(NamedTuple):
    batches: int
    """Batches sent (the next sequence number)."""
    events: int
    """Events in them."""
    dropped_reports: int
    """Changes not published because the queue was full."""
    undescribed_blocks: int
    """Tier blocks published without tokens or parent (their description aged out)."""
    replays: int
    """Replay requests answered."""


class KVEventPublisher:
    """Publishes block events on ``endpoint`` (bound; ``tcp://HOST:0`` picks a port: see
    ``self.endpoint``), replays on ``replay_endpoint`` if given. ``namer``: the names
    blocks have in every medium. Raises zmq.ZMQError if an endpoint cannot be bound."""

    def __init__(
        self,
        namer: BlockNamer,
        endpoint: str,
        *,
        replay_endpoint: str | None = None,
        topic: str = "",
        max_queued: int = 100_000,
        replay_batches: int = 10_000,
        data_parallel_rank: int = 0,
        idle_poll: float = 0.01,
    ) -> None:
        self.translator = Translator(namer)
        self.topic = topic.encode()
        self.max_queued = max_queued
        self.rank = data_parallel_rank
        self.idle_poll = idle_poll
        self.ram = RamSink(self.report)
        """The cache's BlockEvents (``cache.events``)."""
        self.tiers = TierSink(self.report)
        """The tiers' TierEvents (``TieredCache.observe``)."""
        self._queue: deque[Report] = deque([Cleared()])
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=replay_batches)
        self._seq = self._events = self._dropped = self._replays = 0
        self._busy = False
        self._stopping = False
        self._drop_lock = threading.Lock()
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._pub = self._context.socket(zmq.PUB)
        self._replay: zmq.Socket[bytes] | None = None
        try:
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.bind(endpoint)
            self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.replay_endpoint = None
            if replay_endpoint is not None:
                self._replay = self._context.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(replay_endpoint)
                self.replay_endpoint = self._replay.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError:
            self._close_sockets()
            raise
        current_threads()  # this thread keeps its count when the publisher claims one
        self._thread = threading.Thread(target=self._run, name="prefixkv-kv-events", daemon=True)
        self._thread.start()

    def report(self, report: Report) -> None:
        """Queue one change (any thread; never blocks), or count it dropped if full."""
        if len(self._queue) >= self.max_queued:  # a bound within a few reports: no lock
            with self._drop_lock:  # reports come from several threads (cache, tiers)
                self._dropped += 1
            return
        self._queue.append(report)  # deque.append is atomic

    def counts(self) -> PublisherCounts:
        return PublisherCounts(
            self._seq,
            self._events,
            self._dropped,
            self.translator.undescribed,
            self._replays,
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything reported so far is sent; False on timeout (tests, stop)."""
        deadline = time.monotonic() + timeout
        while self._queue or self._busy:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(0.001)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), end the thread, close the sockets."""
        self.flush(timeout)
        self._stopping = True
        self._thread.join(timeout)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self._pub, self._replay):
            if sock is not None:
                sock.close(linger=0)

    def _run(self) -> None:
        helper_thread()
        encoder = msgspec.msgpack.Encoder()
        poller = zmq.Poller()
        if self._replay is not None:
            poller.register(self._replay, zmq.POLLIN)
        while not self._stopping:
            try:
                idle = 0 if self._queue else self.idle_poll
                if self._replay is None or not poller.poll(int(idle * 1000)):
                    time.sleep(0 if self._queue or self._replay is not None else idle)
                else:
                    self._answer_replay()
                self._publish(encoder)
            except Exception:  # a bug here must not end the thread (the queue would fill)
                log.exception("kv events: publishing failed")
                time.sleep(self.idle_poll)

    def _publish(self, encoder: msgspec.msgpack.Encoder) -> None:
        """Send one batch of what is queued, if anything."""
        if not self._queue:
            return
        self._busy = True
        try:
            reports = [
                self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH_REPORTS))
            ]
            events = self.translator.events(reports)
            if not events:
                return
            batch = KVEventBatch(ts=time.time(), events=events, data_parallel_rank=self.rank)
            payload = encoder.encode(batch)
            seq = self._seq.to_bytes(8, "big")
            self._pub.send_multipart((self.topic, seq, payload))
            self._buffer.append((self._seq, payload))
            self._seq += 1
            self._events += len(events)
        finally:
            self._busy = False

    def _answer_replay(self) -> None:
        """Send a requester the kept batches from its ``start_seq`` on, then the end mark."""
        assert self._replay is not None
        frames = self._replay.recv_multipart()
        if len(frames) != 3 or len(frames[2]) != 8:
            log.warning("kv events: ignored a malformed replay request (%d frames)", len(frames))
            return
        client, start = frames[0], int.from_bytes(frames[2], "big")
        for seq, payload in list(self._buffer):
            if seq >= start:
                self._replay.send_multipart(
                    (client, b"", self.topic, seq.to_bytes(8, "big"), payload)
                )
        self._replay.send_multipart((client, b"", b"", END_OF_REPLAY, b""))
        self._replays += 1
