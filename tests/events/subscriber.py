"""A subscriber written from the wire format alone (not with prefixkv's own structs): it
decodes each batch as plain msgpack (an array ``[ts, events, rank]`` whose events are
maps tagged by ``"type"``), rebuilds each medium's contents, and asks for a replay when a
sequence number is missing, as a vLLM-event consumer does."""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import zmq

END = -1
Medium = tuple[str, str | None, str | None]  # medium, locality, ownership


class Held(NamedTuple):
    parent: bytes | None
    tokens: tuple[int, ...]


class Subscriber:
    """Rebuilds ``media[(medium, locality, ownership)] = {name: Held}`` from a stream."""

    def __init__(self, endpoint: str, replay_endpoint: str, timeout_ms: int = 5000) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self.sub.connect(endpoint)
        # DEALER, not REQ: a replay is many replies to one request (a REQ takes one).
        self.replay = self.context.socket(zmq.DEALER)
        self.replay.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self.replay.connect(replay_endpoint)
        self.next_seq = 0
        self.replays = 0
        self.lose = 0
        """Messages to read and throw away (a lossy network): the gap they leave is what
        the replay must fill."""
        self.media: dict[Medium, dict[bytes, Held]] = {}
        self.cleared = 0

    def close(self) -> None:
        self.sub.close(linger=0)
        self.replay.close(linger=0)

    def sync(self, batches: int) -> None:
        """Read until batches ``0 .. batches - 1`` are applied, each once and in order."""
        while self.next_seq < batches:
            if not self.sub.poll(200):  # behind, and nothing comes: joined late, or lost
                self._replay_from(self.next_seq)  # the last ones
                continue
            _, seq_bytes, payload = self.sub.recv_multipart()
            if self.lose:
                self.lose -= 1
                continue
            seq = int.from_bytes(seq_bytes, "big")
            if seq > self.next_seq:
                self._replay_from(self.next_seq)
            if seq == self.next_seq:
                self._apply(payload)

    def _replay_from(self, start: int) -> None:
        self.replays += 1
        self.replay.send_multipart((b"", start.to_bytes(8, "big")))
        while True:
            _, _, seq_bytes, payload = self.replay.recv_multipart()
            seq = int.from_bytes(seq_bytes, "big", signed=True)
            if seq == END:
                return
            if seq == self.next_seq:
                self._apply(payload)

    def _apply(self, payload: bytes) -> None:
        batch = msgspec.msgpack.decode(payload)
        assert isinstance(batch, list) and len(batch) in (2, 3), batch
        ts, events = batch[0], batch[1]
        assert isinstance(ts, float) and isinstance(events, list)
        for event in events:
            self._event(event)
        self.next_seq += 1

    def _event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "AllBlocksCleared":
            self.media.clear()
            self.cleared += 1
            return
        medium = (event["medium"], event.get("locality"), event.get("ownership"))
        held = self.media.setdefault(medium, {})
        names = event["block_hashes"]
        if kind == "BlockRemoved":
            for name in names:
                assert name in held, f"{medium}: removed a block never stored"
                del held[name]
            return
        assert kind == "BlockStored", kind
        for key in ("parent_block_hash", "token_ids", "block_size", "lora_id", "lora_name"):
            assert key in event, key  # vLLM's decoder requires them (no default)
        size, tokens, parent = event["block_size"], event["token_ids"], event["parent_block_hash"]
        assert len(tokens) in (0, size * len(names))
        for i, name in enumerate(names):
            assert name not in held, f"{medium}: stored a block held already"
            held[name] = Held(parent, tuple(tokens[i * size : (i + 1) * size]))
            parent = name
