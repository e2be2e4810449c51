"""``prefixkv warm FILE``: prefill a list of prompts into a running server, so that the
first real request on each finds it cached (or, with ``--pin-ttl``, pin each for a while).

FILE is JSON lines, each a prompt (a string), a chat (a list of messages), or an object
with ``prompt`` or ``messages`` (and optionally ``cache_salt``, to warm a salted namespace).
Each is sent as a one-token request (``max_tokens: 1``) with the given key, so it lands in
that key's namespace; with ``--pin-ttl`` it goes to ``/v1/cache/pin`` instead. Prints per
line the prompt's tokens, how many were cached already and how many are cached now (its
full blocks), then the tenant's cache before and after. Standard library only."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prefixkv.cli.options import add_option, positive_float
from prefixkv.cli.setup import CommandError

TIMEOUT_SECONDS = 600.0


def add_parser(commands: Any) -> None:
    """Add ``warm`` to ``commands`` (the ``prefixkv`` subparsers)."""
    p = commands.add_parser("warm", help="prefill (or pin) a JSONL list of prompts in a server")
    p.add_argument("file", help="JSON lines: a prompt string, a message list, or an object")
    add_option(p, "--url", "the server", default="http://127.0.0.1:8000")
    add_option(p, "--api-key", "the key whose namespace to warm", secret=True)
    add_option(
        p, "--pin-ttl", "pin each prompt for this many seconds (POST /v1/cache/pin)",
        type=positive_float,
    )  # fmt: skip
    p.set_defaults(run=warm_command)


def body_of(item: Any) -> tuple[str, dict[str, Any]]:
    """(endpoint, body) for one line's value; ValueError saying what a line may be."""
    if isinstance(item, str):
        return "/v1/completions", {"prompt": item}
    if isinstance(item, list):
        return "/v1/chat/completions", {"messages": item}
    if isinstance(item, dict) and ("prompt" in item) != ("messages" in item):
        kept = {k: item[k] for k in ("prompt", "messages", "cache_salt") if k in item}
        return ("/v1/completions" if "prompt" in item else "/v1/chat/completions"), kept
    raise ValueError(
        "a line is a prompt string, a list of messages, or an object with prompt or messages"
    )


class Client:
    """JSON over HTTP with the caller's key; errors as the server's message."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, self.headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{exc.code}: {_message(exc)}") from None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc.reason)


def warm_command(args: argparse.Namespace) -> int:
    client = Client(args.url, args.api_key)
    try:
        lines = Path(args.file).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CommandError(f"{args.file}: {exc.strerror}") from exc
    try:
        before = client.call("/v1/cache/stats")
    except (OSError, RuntimeError) as exc:  # URLError is an OSError: nothing listening
        raise CommandError(f"{args.url}: {exc}") from exc
    size, failed = int(before["block_size"]), 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            print(f"line {number}: {_warm_one(client, json.loads(line), args.pin_ttl, size)}")
        except (ValueError, RuntimeError) as exc:
            print(f"line {number}: not warmed: {exc}", file=sys.stderr)
            failed += 1
    after = client.call("/v1/cache/stats")
    print(
        f"cache ({before['scope']}): {before['used_blocks']} -> {after['used_blocks']} blocks, "
        f"{after['pinned_blocks']} pinned; {failed} line(s) failed"
    )
    return 1 if failed else 0


def _warm_one(client: Client, item: Any, pin_ttl: float | None, block_size: int) -> str:
    path, body = body_of(item)
    if pin_ttl is not None:
        pinned = client.call("/v1/cache/pin", {**body, "ttl_seconds": pin_ttl})
        return (
            f"{pinned['prompt_tokens']} prompt tokens, {pinned['cached_tokens']} were cached, "
            f"{pinned['pinned_tokens']} pinned for {pin_ttl:g} s (id {pinned['id']})"
        )
    usage = client.call(path, {**body, "max_tokens": 1})["usage"]
    prompt = int(usage["prompt_tokens"])
    was = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return (
        f"{prompt} prompt tokens, {was} were cached, {prompt // block_size * block_size} cached now"
    )
