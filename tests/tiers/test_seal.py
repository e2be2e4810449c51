"""Sealed records against an attacker who can write the store: forged KV (with every public
checksum recomputed, in the current and the old record format), records moved to another
name, and what a reader without the key learns of the prompts (no token id).

Each attack is also run against unsealed (checksummed) records, where it must succeed: that
shows the forgery is competent, so its refusal under a key is the seal's doing."""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import xxhash

from prefixkv.tiers import record
from prefixkv.tiers.codec import RawCodec
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.seal import ChecksumSeal
from prefixkv.tiers.tiered import TieredCache
from prefixkv.tokens import as_token_bytes
from tests.redis_fixtures import RedisServer
from tests.tiers.kv import BLOCK, FINGERPRINT, hot_cache, kv_of, kv_tensor, opened

KEY = TierKey(bytes(range(100, 132)))
PROMPT = [40_000 + 97 * i for i in range(32)]  # 8 blocks, ids < 2**16: every width applies
OTHER = [1_000_003 + 7_919 * i for i in range(32)]  # ids past 2**16
Forge = Callable[[bytes, bytes, bytes], bytes]
"""(stored record, the block's tokens, forged payload) -> the attacker's record"""


def cache_on(directory: Path, key: TierKey | None, ram_blocks: int = 16) -> TieredCache:
    return TieredCache(hot_cache(ram_blocks), [DiskTier(directory, 1 << 24)], FINGERPRINT, key=key)


def filled(directory: Path, key: TierKey | None, *prompts: list[int]) -> None:
    """A process that stores ``prompts`` and ends (its records stay on disk)."""
    cache = cache_on(directory, key)
    for tokens in prompts:
        cache.hot.store(tokens, kv_of(tokens))
    assert cache.flush(10)
    cache.shutdown()


def lookup(cache: TieredCache, tokens: list[int]) -> tuple[int, bool]:
    """(tokens served, whether the served KV is exactly the prompt's)."""
    with opened(cache, tokens) as (served, got):
        return served, torch.equal(got, kv_tensor(tokens)[:, :, :, :served])


def block_files(cache: TieredCache, directory: Path, tokens: list[int]) -> list[Path]:
    names = cache.namer.names(as_token_bytes(tokens), None, len(tokens) // BLOCK)
    return [next(directory.rglob(f"{name.hex()}.kv")) for name in names]


# --- the attacker's forgeries: each knows the public formats and the true tokens ---------


def flip_payload(raw: bytes, tokens: bytes, payload: bytes) -> bytes:
    """The stored record with its KV bytes rewritten in place (header and trailer kept)."""
    end = len(raw) - record.TRAILER_BYTES
    return raw[: end - len(payload)] + payload + raw[end:]


def as_checksummed(raw: bytes, tokens: bytes, payload: bytes) -> bytes:
    """A new record in the unkeyed format under the stored one's name, parent and model,
    with the true tokens, forged KV and a correct XXH3-128 checksum."""
    head = record.read_header(raw)
    return record.encode(
        ChecksumSeal(), head.codec, head.fingerprint, head.name, head.parent, tokens, payload
    )


def as_format_1(raw: bytes, tokens: bytes, payload: bytes) -> bytes:
    """The same, in record format 1 (before sealing): XXH3-64 over header, tokens, payload."""
    head = record.read_header(raw)
    layout = struct.Struct("<4sHBB16s16s16sIIQQ")
    fields = (b"PKVB", 1, head.codec, 0, head.fingerprint, head.name, head.parent)
    sizes = (len(tokens) // 4, len(tokens), len(payload))
    digest = xxhash.xxh3_64(layout.pack(*fields, *sizes, 0) + tokens + payload).intdigest()
    return layout.pack(*fields, *sizes, digest) + tokens + payload


FORGERIES = {"flip": flip_payload, "checksummed": as_checksummed, "format-1": as_format_1}


def forge_all(cache: TieredCache, directory: Path, forge: Forge) -> None:
    """Rewrite every record of PROMPT with KV of OTHER (plausible, wrong)."""
    wrong = kv_tensor(OTHER)
    ids = as_token_bytes(PROMPT)
    for i, path in enumerate(block_files(cache, directory, PROMPT)):
        payload = RawCodec().encode(wrong[:, :, :, i * BLOCK : (i + 1) * BLOCK])
        tokens = bytes(ids[i * BLOCK * 4 : (i + 1) * BLOCK * 4])
        path.write_bytes(forge(path.read_bytes(), tokens, payload))


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_records_are_counted_failures_never_served(tmp_path: Path, forgery: str) -> None:
    filled(tmp_path, KEY, PROMPT)
    reader = cache_on(tmp_path, KEY)
    forge_all(reader, tmp_path, FORGERIES[forgery])
    assert lookup(reader, PROMPT) == (0, True)  # block 0 is refused, so nothing is served
    (disk,) = reader.tier_stats()
    assert disk.verification_failures == 1 and disk.hit_blocks == 0
    # Each time, the request recomputes (the engine stores the true KV, written down in
    # place of the refused record), and the next lookup serves the true blocks up to the
    # next forged one: never a forged one, and each forgery counted once.
    for blocks in range(1, 9):
        reader.hot.store(PROMPT, kv_of(PROMPT))
        assert reader.flush(10)
        reader.reset()
        assert lookup(reader, PROMPT) == (blocks * BLOCK, True)
        assert reader.tier_stats()[0].verification_failures == min(blocks + 1, 8)
    reader.shutdown()


def test_without_a_key_the_same_forgery_is_served(tmp_path: Path) -> None:
    """Why shared stores need a key: a checksum is no seal (this is the issue's attack)."""
    filled(tmp_path, None, PROMPT)
    reader = cache_on(tmp_path, None)
    forge_all(reader, tmp_path, as_checksummed)
    assert lookup(reader, PROMPT) == (32, False)
    assert reader.tier_stats()[0].verification_failures == 0
    reader.shutdown()


def test_a_record_copied_to_another_name_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    filled(tmp_path, KEY, PROMPT, OTHER)
    reader = cache_on(tmp_path, KEY)
    mine, theirs = block_files(reader, tmp_path, PROMPT)[0], block_files(reader, tmp_path, OTHER)[0]
    mine.write_bytes(theirs.read_bytes())  # as stored
    assert lookup(reader, PROMPT) == (0, True)
    assert "(name:" in caplog.text
    # With the header's name and parent rewritten to the target's, the seal breaks instead.
    filled(tmp_path, KEY, PROMPT)
    target = record.read_header(mine.read_bytes())
    moved = bytearray(theirs.read_bytes())
    moved[24:56] = target.name + target.parent  # header offsets of name and parent
    mine.write_bytes(bytes(moved))
    reader = cache_on(tmp_path, KEY)
    assert lookup(reader, PROMPT) == (0, True)
    assert "(seal: authentication failed" in caplog.text
    assert reader.tier_stats()[0].verification_failures == 1


def test_a_reader_with_another_key_finds_nothing(tmp_path: Path) -> None:
    filled(tmp_path, KEY, PROMPT)
    other = cache_on(tmp_path, TierKey(bytes(32)))
    assert lookup(other, PROMPT) == (0, True)  # other names: nothing even read
    assert other.tier_stats()[0].counters.reads == 0


def token_encodings(tokens: list[int]) -> set[bytes]:
    """Byte strings that would show the ids: each as (u)int32 and int64 in either byte
    order and in decimal, and each block's ids as a run of 16-, 24- and 32-bit integers."""
    found: set[bytes] = set()
    for token in tokens:
        for order in "<>":
            found |= {struct.pack(f"{order}I", token), struct.pack(f"{order}Q", token)}
        found.add(str(token).encode())
    for i in range(0, len(tokens), BLOCK):
        block = tokens[i : i + BLOCK]
        for width in (2, 3, 4):
            if max(block) < 1 << (8 * width):
                for order in ("little", "big"):
                    found.add(b"".join(t.to_bytes(width, order) for t in block))
    return found


def stored_bytes(root: Path) -> bytes:
    """Every byte the disk tier keeps: file names and contents."""
    return b"".join(p.name.encode() + p.read_bytes() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(("key", "leaks"), [(KEY, False), (None, True)])
def test_records_read_without_the_key_show_no_token_id(
    tmp_path: Path, key: TierKey | None, leaks: bool
) -> None:
    filled(tmp_path, key, PROMPT, OTHER)
    data = stored_bytes(tmp_path)
    assert len(data) > 16 * 32 * 4  # 16 records were written
    shown = [e for e in token_encodings(PROMPT) | token_encodings(OTHER) if e in data]
    assert bool(shown) == leaks, shown[:5]


@pytest.mark.process
def test_redis_holds_no_token_id_under_a_key(redis_server: RedisServer) -> None:
    from prefixkv.tiers.redis import RedisTier

    cache = TieredCache(hot_cache(16), [RedisTier(redis_server.url)], FINGERPRINT, key=KEY)
    for tokens in (PROMPT, OTHER):
        cache.hot.store(tokens, kv_of(tokens))
    assert cache.flush(10)
    with redis_server.client() as client:
        keys = client.keys("*")
        data = b"".join(keys) + b"".join(client.mget(keys))
    assert len(keys) == 16
    assert not [e for e in token_encodings(PROMPT) | token_encodings(OTHER) if e in data]
    cache.reset()
    assert lookup(cache, PROMPT) == (32, True)
    cache.shutdown()


def test_the_key_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = bytes(range(200, 232))
    key = TierKey(secret)
    assert secret.hex() not in repr(key) + str(key) + repr(KEY)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(key)
    cache = TieredCache(hot_cache(4), [], FINGERPRINT, key=key)
    assert secret.hex() not in repr(cache.promoter.seal) + repr(cache.writer.seal)
