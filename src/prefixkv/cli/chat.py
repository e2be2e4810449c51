"""``prefixkv chat``: the engine served to a person at a terminal, one turn at a time.

The whole conversation is sent again every turn, as a chat API client would, so the prefix
cache shows its worth: after each reply a line reports how many prompt tokens came from the
cache and the time to first token.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from prefixkv.engine.engine import Completion, Engine
from prefixkv.engine.request import InvalidRequestError

HELP = "Type a message. /reset starts a new conversation, /quit (or end of input) exits."


def chat_loop(
    engine: Engine,
    *,
    system: str | None = None,
    max_tokens: int = 256,
    temperature: float = 0.0,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> int:
    """Run the conversation until /quit or end of input; returns the exit status (0)."""
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    out.write(f"prefixkv chat with {engine.name}. {HELP}\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            out.write("\n")
            return 0
        if line == "/quit":
            return 0
        if line == "/reset":
            messages = list(start)
            out.write("[conversation reset]\n")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        reply = _turn(engine, messages, max_tokens, temperature, out)
        if reply is None:
            messages.pop()  # the turn failed: forget the question too
        else:
            messages.append({"role": "assistant", "content": reply.text})


def _turn(
    engine: Engine,
    messages: list[dict[str, str]],
    max_tokens: int,
    temperature: float,
    out: TextIO,
) -> Completion | None:
    """Stream one reply to ``out``; the Completion, or None after an error or Ctrl-C."""
    try:
        stream = engine.stream(messages, max_tokens=max_tokens, temperature=temperature)
    except InvalidRequestError as exc:
        out.write(f"[error: {exc}]\n")
        return None
    out.write("assistant> ")
    try:
        for item in stream:
            if isinstance(item, Completion):
                out.write(f"\n{describe(item)}\n")
                out.flush()
                return item
            if isinstance(item, str):  # (no TokenLogprob: the chat asks for none)
                out.write(item)
            out.flush()
    except KeyboardInterrupt:
        out.write("\n[interrupted]\n")
    finally:
        stream.close()  # releases the cache lease at once if the turn was interrupted
    return None


def describe(completion: Completion) -> str:
    """The per-turn status line, e.g. ``[cached 128/140 prompt tokens, TTFT 0.18 s]``."""
    return (
        f"[cached {completion.cached_tokens}/{completion.prompt_tokens} prompt tokens, "
        f"TTFT {completion.ttft:.2f} s, {completion.completion_tokens} tokens in "
        f"{completion.total_time:.2f} s]"
    )
