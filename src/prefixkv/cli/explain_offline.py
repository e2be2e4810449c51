"""``prefixkv explain --log FILE``: why a prompt would (not) hit a cache that served a
request log, answered offline (see :mod:`prefixkv.whatif.explain`).

The prompt is tokenized as the server tokenizes a request (the model's tokenizer and chat
template: the model is opened, a GGUF's weights are not read) and its blocks named as the
log named them, in the namespace of ``--api-key`` (its tenant; none: the anonymous one)
and ``--salt``. A log written by a server with tiers names blocks with the tiers' (keyed)
names, which only that server can recompute: refused, naming the live alternative.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefixkv.cli.explain import WHY, body_of
from prefixkv.cli.setup import CommandError
from prefixkv.whatif.explain import OfflineFinding
from prefixkv.whatif.records import LoggedRequest

_WHY = WHY | {
    "lower_tier": "the missing blocks are in the disk tier, not in RAM",
    "cold": "no request in the log cached this prompt's next block",
}


def offline_command(args: argparse.Namespace) -> int:
    from prefixkv.whatif.explain import explain_offline
    from prefixkv.whatif.replay import CacheConfig

    requests = _read(Path(args.log))
    ids, model = _prompt_ids(args)
    names, count = _names(args, model, ids, requests[0].block_size)
    config = CacheConfig(args.cache_bytes, args.policy, args.disk_cache_bytes)
    try:
        finding = explain_offline(requests, names, count, config)
    except ValueError as exc:
        raise CommandError(f"--log {args.log}: {exc}") from exc
    print(json.dumps(_answer(finding), indent=2) if args.json else report(finding))
    return 0


def _read(path: Path) -> list[LoggedRequest]:
    from prefixkv.cli.simulate import read_requests

    requests = read_requests(path)
    if any(r.naming == "tiers" for r in requests):
        raise CommandError(
            f"--log {path}: a server with tiers wrote it; its block names are the tiers' "
            "(keyed, over the weights): ask that server instead (prefixkv explain --url)"
        )
    return requests


def _prompt_ids(args: argparse.Namespace) -> tuple[bytes, str]:
    """The prompt's token bytes as the server would tokenize it, and the model's name."""
    from prefixkv.engine.intake import Intake
    from prefixkv.engine.loader import open_model
    from prefixkv.engine.request import InvalidRequestError
    from prefixkv.models.family import text_config

    body = body_of(args)
    prompt: Any = body.get("messages", body.get("prompt"))
    try:
        loaded = open_model(args.model)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--model {args.model}: {exc}") from exc
    config = text_config(loaded.model.config)
    intake = Intake(loaded.tokenizer, int(config.vocab_size), loaded.context_length)
    try:
        return bytes(intake.tokens(prompt)), loaded.name
    except InvalidRequestError as exc:
        raise CommandError(f"the prompt: {exc}") from exc


def _names(args: argparse.Namespace, model: str, ids: bytes, size: int) -> tuple[list[bytes], int]:
    """The names of the prompt's full blocks in its namespace, and its token count."""
    from prefixkv.cache.tenants import Namespace
    from prefixkv.server.auth import tenant_of
    from prefixkv.server.request_log import ModelNamer
    from prefixkv.tokens import TOKEN_BYTES

    tenant = tenant_of(args.api_key) if args.api_key else ""
    count = len(ids) // TOKEN_BYTES
    namer = ModelNamer(model, size)
    return namer.names(ids, Namespace(tenant, args.salt or ""), count // size), count


def _answer(finding: OfflineFinding) -> dict[str, Any]:
    answer = asdict(finding)
    answer["hit_tokens"] = finding.hit_tokens
    return answer


def report(finding: OfflineFinding) -> str:
    """The finding as a few readable lines."""
    config = finding.config
    disk = "" if config.disk_bytes is None else f", disk {config.disk_bytes:,} bytes"
    lines = [
        f"reason: {finding.reason} ({_WHY[finding.reason]})",
        f"prompt: {finding.prompt_tokens} tokens; would hit {finding.hit_tokens} "
        f"({finding.hit_blocks} blocks of {finding.block_size}) after {finding.requests} "
        f"logged requests replayed at {config.ram_bytes:,} bytes ({config.policy}{disk})",
    ]
    if finding.eviction is not None:
        when = finding.eviction
        lines.append(f"evicted when request {when.request} of the log arrived (time {when.time})")
    if finding.lower_tier_blocks:
        lines.append(f"lower_tier: disk {finding.lower_tier_blocks} blocks")
    return "\n".join(lines)
