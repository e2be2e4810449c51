"""The conformance suite's requests, sent through the official ``openai`` client to
``prefixkv serve`` and to a reference server (vLLM's CPU build), and what each answer's
shape is (:mod:`prefixkv.bench.conformance_shapes`).

Every case is one request: chat or completions, streamed or not, with the fields a client
of an OpenAI-compatible server sends (logprobs, n, tools, structured outputs, stops) and a
few it gets wrong (the error bodies). ``run_case`` returns the answer's shape and, for a
greedy case, its texts (one per choice), which two servers running the same weights in the
same precision should agree on.

Where the two servers' shapes legitimately differ,
:data:`prefixkv.bench.conformance_known.KNOWN_DIFFERENCES` says where and why; any other
difference fails the suite (``tests/server/test_conformance.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import openai

from prefixkv.bench.conformance_shapes import shape, stream_shape

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK: list[dict[str, Any]] = [
    {"role": "user", "content": "Name three rivers of Europe, please."},
]
SHORT: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the capital of France? Answer in one word."},
]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _tool_history() -> list[dict[str, Any]]:
    """Three questions answered with weather calls, then a fourth question: SmolLM2 answers
    the fourth with a call (tests/server/test_smollm2_tools.py)."""
    history: list[dict[str, Any]] = []
    for i, city in enumerate(["London", "Rome", "Berlin"]):
        arguments = json.dumps({"city": city})
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }
        history += [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": '{"celsius": 12}'},
        ]
    return [*history, {"role": "user", "content": "Weather in Paris?"}]


@dataclass(frozen=True)
class Case:
    """One request: ``api`` "chat" or "completions"; ``body`` the client's keyword arguments
    without ``model``; ``greedy``: temperature 0, so two servers on the same weights and
    precision should write the same text."""

    name: str
    api: str
    body: dict[str, Any]
    greedy: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # sent as extra_body


def _chat(name: str, greedy: bool = True, **body: Any) -> Case:
    body.setdefault("messages", ASK)
    body.setdefault("max_tokens", 8)
    if greedy:
        body["temperature"] = 0
    return Case(name, "chat", body, greedy)


def _completion(name: str, greedy: bool = True, **body: Any) -> Case:
    body.setdefault("prompt", "The three largest cities of Italy are")
    body.setdefault("max_tokens", 8)
    if greedy:
        body["temperature"] = 0
    return Case(name, "completions", body, greedy)


_USAGE = {"include_usage": True}
CASES: tuple[Case, ...] = (
    _chat("chat"),
    _chat("chat-stop", messages=SHORT, max_tokens=40),
    _chat("chat-stop-string", stop=["\n", "."], max_tokens=40),
    _chat("chat-stream", stream=True, stream_options=_USAGE),
    _chat("chat-stream-no-usage", stream=True),
    _chat("chat-logprobs", logprobs=True, top_logprobs=2, max_tokens=4),
    _chat(
        "chat-logprobs-stream",
        logprobs=True,
        top_logprobs=2,
        max_tokens=4,
        stream=True,
        stream_options=_USAGE,
    ),
    _chat("chat-n", greedy=False, n=3, seed=7, temperature=1.0, max_tokens=6),
    _chat(
        "chat-n-stream",
        greedy=False,
        n=2,
        seed=7,
        temperature=1.0,
        max_tokens=6,
        stream=True,
        stream_options=_USAGE,
    ),
    _chat(
        "chat-json-schema",
        messages=[{"role": "user", "content": "Describe a person."}],
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
    ),
    _chat(
        "chat-tool-named",
        messages=SHORT,
        tools=[WEATHER],
        max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ),
    _chat(
        "chat-tool-named-stream",
        messages=SHORT,
        tools=[WEATHER],
        max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    ),
    _chat("chat-tool-auto", messages=_tool_history(), tools=[WEATHER], max_tokens=40),
    _chat(
        "chat-tool-auto-stream",
        messages=_tool_history(),
        tools=[WEATHER],
        max_tokens=40,
        stream=True,
    ),
    _completion("completion"),
    _completion("completion-logprobs", logprobs=2, max_tokens=4),
    _completion("completion-stream", logprobs=1, max_tokens=4, stream=True, stream_options=_USAGE),
    _completion("completion-n", greedy=False, n=2, seed=3, temperature=1.0),
    _chat("error-n", greedy=False, n=0),
    _chat("error-temperature", greedy=False, temperature=-1),
    _chat("error-max-tokens", greedy=False, max_tokens=-1),
    _chat("error-messages", greedy=False, messages=[]),
    _chat(
        "error-tool-choice",
        greedy=False,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "undeclared"}},
    ),
    _completion("error-logprobs", greedy=False, logprobs=50),
)


class Answer(NamedTuple):
    """A case's answer: its shape, and the text of each choice (index order; [] for an
    error)."""

    shape: Any
    texts: list[str]


def run_case(client: openai.OpenAI, case: Case, model: str) -> Answer:
    """Send ``case`` to the server behind ``client`` as ``model``; an error's shape is its
    status and JSON body's shape."""
    create = client.chat.completions.create if case.api == "chat" else client.completions.create
    try:
        reply: Any = create(model=model, **case.body, extra_body=case.extra or None)
        if case.body.get("stream"):
            chunks = [chunk.model_dump(exclude_unset=True) for chunk in reply]
            return Answer(stream_shape(chunks), _streamed_texts(chunks))
        whole = reply.model_dump(exclude_unset=True)
    except openai.APIStatusError as error:
        body = error.response.json()
        return Answer({"status": f"={error.status_code}", "body": shape(body)}, [])
    return Answer(shape(whole), [_text(c) for c in sorted(whole["choices"], key=_index)])


def _index(choice: dict[str, Any]) -> int:
    return int(choice["index"])


def _text(choice: dict[str, Any]) -> str:
    message = choice.get("message") or {}
    return str(message.get("content") or choice.get("text") or "")


def _streamed_texts(chunks: list[dict[str, Any]]) -> list[str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            part = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            texts[_index(choice)] = texts.get(_index(choice), "") + part
    return [texts[i] for i in sorted(texts)]
