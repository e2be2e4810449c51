"""``prefixkv explain``: ask a running server why a prompt would (not) hit its cache.

Sends the prompt (text, or chat messages read from a JSON file) to ``POST
/v1/cache/explain`` and prints the answer readably (``--json``: as the server sent it).
Nothing runs on the server: no generation, no change to its cache. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prefixkv.cli.setup import CommandError

TIMEOUT = 60.0
WHY = {
    "hit": "every prompt token is in cached blocks",
    "partial_block": "every full block is cached; the tail shorter than a block never is",
    "lower_tier": "the missing blocks are in a lower tier (disk/Redis), not in RAM",
    "evicted": "these very blocks were cached, then evicted",
    "diverged": "the cache holds a different continuation where the prompt leaves it",
    "other_namespace": "another of your cache_salt namespaces holds more of this prompt",
    "cold": "nothing like this prompt is cached",
    "disabled": "the server runs without a prefix cache",
}


def body_of(args: argparse.Namespace) -> dict[str, Any]:
    """The request body: ``messages`` from the file, else ``prompt``; CommandError if
    neither or both, or the file is not a JSON list of messages."""
    if (args.prompt is None) == (args.messages is None):
        raise CommandError("give a prompt or --messages FILE (one of them)")
    body: dict[str, Any] = {}
    if args.messages is not None:
        try:
            messages = json.loads(Path(args.messages).read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"--messages {args.messages}: {exc}") from exc
        if isinstance(messages, dict):  # a whole chat completions body
            messages = messages.get("messages")
        if not isinstance(messages, list):
            raise CommandError(f"--messages {args.messages}: expected a JSON list of messages")
        body["messages"] = messages
    else:
        body["prompt"] = args.prompt
    if args.salt is not None:
        body["cache_salt"] = args.salt
    return body


def ask(url: str, api_key: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to the server's explain endpoint; CommandError with the server's own
    message on an HTTP error."""
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/cache/explain",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {api_key}"} if api_key else {}),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise CommandError(f"the server answered {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise CommandError(f"cannot reach {url}: {exc.reason}") from exc


def report(answer: dict[str, Any]) -> str:
    """The answer as a few readable lines."""
    reason = answer["reason"]
    misses = ", ".join(f"{k} {v}" for k, v in answer["miss_tokens"].items()) or "none"
    prefix = answer["cached_prefix"]
    lines = [
        f"reason: {reason} ({WHY.get(reason, '')})",
        f"prompt: {answer['prompt_tokens']} tokens; would hit {answer['hit_tokens']} "
        f"({prefix['blocks']} blocks of {answer['block_size']}); miss tokens: {misses}",
    ]
    if (diff := answer.get("first_difference")) is not None:
        where = answer.get("diverged_in")
        message = ""
        if where and where.get("message") is not None:
            turn = ", an earlier turn" if where["earlier_turn"] else ", the last message"
            message = f" (message {where['message']}, {where['role']}{turn})"
        lines += [
            f"first difference at token {diff['token']}{message}:",
            f"  prompt: {diff['prompt']['before']!r} | {diff['prompt']['after']!r}",
            f"  cache:  {diff['prompt']['before']!r} | {diff['cache']['after']!r}",
        ]
    if (evicted := answer.get("evicted")) is not None:
        whose = "your own" if evicted["own_tenant"] else "another tenant's (or a reset)"
        lines.append(
            f"evicted {evicted['seconds_ago']:.1f} s ago under {evicted['pressure']} "
            f"pressure from {whose} requests"
        )
    for key in ("lower_tier", "other_namespace", "other_tenant"):
        if (found := answer.get(key)) is not None:
            lines.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    return "\n".join(lines)


def explain_command(args: argparse.Namespace) -> int:
    answer = ask(args.url, args.api_key, body_of(args))
    print(json.dumps(answer, indent=2) if args.json else report(answer), file=sys.stdout)
    return 0
