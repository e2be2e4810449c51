"""SmolLM2-135M-Instruct calling a tool through the real server and the official client: its
template ignores tools, so they reach it as the Hermes-style system block; a few past calls
in the history (which the server renders as ``<tool_call>`` turns) are enough for the small
model to answer a new question with a call that the server parses, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from prefixkv.bench.conformance import WEATHER
from tests.server.harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.smollm2, pytest.mark.slow]


def _history() -> list[Any]:
    """Three questions answered with calls, then a fourth question."""
    history: list[Any] = []
    for i, city in enumerate(["London", "Rome", "Berlin"]):
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
        }
        history += [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ]
    return [*history, {"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("smollm2-tools") / "server.log"
    args = ["--model", "smollm2", "--cache-bytes", "128MiB"]
    started = ServerProcess(args, log).wait_ready(timeout=300)
    yield started
    assert started.stop() == 0, started.output()


def test_smollm2_calls_the_tool(server: ServerProcess) -> None:
    common: Any = {
        "model": "smollm2",
        "messages": _history(),
        "tools": [WEATHER],
        "temperature": 0,
        "max_tokens": 40,
    }
    client = server.client()
    reply = client.chat.completions.create(**common)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    names, arguments, reasons = "", "", []
    for chunk in client.chat.completions.create(**common, stream=True):
        for streamed in chunk.choices:
            reasons.append(streamed.finish_reason)
            for part in streamed.delta.tool_calls or []:
                assert part.function is not None
                names += part.function.name or ""
                arguments += part.function.arguments or ""
    assert names == "get_weather" and json.loads(arguments) == {"city": "Paris"}
    assert reasons[-1] == "tool_calls"


@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_forced_choice_makes_smollm2_call_from_the_instruction_alone(
    server: ServerProcess, choice: str
) -> None:
    """Without a history of calls SmolLM2 describes the JSON instead of calling (see
    test_smollm2_calls_the_tool); a forced choice masks its reply to a call."""
    forced: Any = (
        "required" if choice == "required"
        else {"type": "function", "function": {"name": "get_weather"}}
    )  # fmt: skip
    # One call: with parallel calls allowed, greedy SmolLM2 under ``required`` writes call
    # after call until max_tokens cuts it (finish reason length).
    reply = server.client().chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER], tool_choice=forced, temperature=0, max_tokens=40,
        parallel_tool_calls=False,
    )  # fmt: skip
    choice_ = reply.choices[0]
    # OpenAI's and vLLM's reasons: tool_calls for required, stop for a named choice
    want = "tool_calls" if choice == "required" else "stop"
    assert choice_.finish_reason == want, choice_.message.content
    (call,) = choice_.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
