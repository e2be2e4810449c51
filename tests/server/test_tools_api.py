"""Tools through the official ``openai`` client, over an engine whose reply is scripted (a
tiny random model would emit gibberish): calls parsed into ``tool_calls``, streamed and not;
``tool_choice``; a growing tool history reused from the cache; 400s naming the field;
``/tokenize`` with tools."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from typing import Any

import openai
import pytest

from prefixkv.engine.batch.records import StepReport
from prefixkv.engine.intake import Intake
from prefixkv.engine.logprob_records import Candidate, TokenLogprob
from prefixkv.engine.prompts import Prompt
from prefixkv.engine.request import Completion, GrammarSpec, Request, SamplingParams
from prefixkv.engine.role import Sink
from prefixkv.tokens import token_count
from tests.server.conftest import App, running_app
from tests.server.fake_engine import VOCAB, FakeEngine, FakeRunner

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class ScriptedEngine(FakeEngine):
    """Replies with ``script`` (its deltas in order), whatever the prompt; records the
    prompts (messages as the server rendered them), the grammars asked for (then dropped:
    a script follows no mask) and the requests it ran."""

    context_length = 4096  # the tools' system block alone is ~600 characters

    def __init__(self) -> None:
        super().__init__(capacity_blocks=4096)
        self.intake = Intake(self.tokenizer, VOCAB, self.context_length)
        self.script: list[str] = []
        self.reason = "stop"  # the finish reason the script ends with ("length": cut)
        self.seen: list[Request] = []
        self.prompts: list[Any] = []
        self.grammars: list[GrammarSpec | None] = []

    def request(self, prompt: Prompt, params: SamplingParams, **kwargs: Any) -> Request:
        self.prompts.append(prompt)
        self.grammars.append(params.grammar)
        return super().request(prompt, replace(params, grammar=None), **kwargs)

    def runner(self, on_step: Callable[[StepReport], None]) -> FakeRunner:
        return ScriptedRunner(self, on_step)


class ScriptedRunner(FakeRunner):
    def steps(self, request: Request, sink: Sink, start: float) -> Generator[None, None, None]:
        engine = self.fake
        assert isinstance(engine, ScriptedEngine)
        engine.seen.append(request)
        count = token_count(request.ids)
        table = engine.cache.open(request.ids, request.namespace)
        try:
            reuse = min(table.cached_tokens, count - 1)
            for delta in engine.script:
                if request.params.logprobs is not None:  # one "token" per delta
                    sink.deliver(_logprob(delta))
                sink.deliver(delta)
                yield
            engine.cache.reserve(table, count)
            engine.cache.commit(table, request.ids)
        finally:
            engine.cache.close(table)
        text = "".join(engine.script)
        elapsed = time.perf_counter() - start
        ids = tuple(range(len(engine.script)))
        logprobs = tuple(_logprob(delta) for delta in engine.script)
        completion = Completion(text, ids, count, reuse, engine.reason, elapsed, elapsed, logprobs)
        sink.deliver(completion)


def _logprob(delta: str) -> TokenLogprob:
    return TokenLogprob(Candidate(0, delta, delta.encode(), -0.5), ())


@pytest.fixture
def scripted() -> Iterator[App]:
    with running_app(ScriptedEngine(), max_tokens_limit=64, default_max_tokens=16) as running:
        yield running


def _script(app: App, text: str, size: int = 3) -> None:
    """The reply, cut into deltas of ``size`` characters (cuts fall inside the tags)."""
    engine = app.engine
    assert isinstance(engine, ScriptedEngine)
    engine.script = [text[i : i + size] for i in range(0, len(text), size)]


def _ask(app: App, **extra: Any) -> Any:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    return app.openai().chat.completions.create(
        model="fake", messages=messages, tools=[WEATHER], **extra
    )


def _streamed(app: App, **extra: Any) -> tuple[str, list[dict[str, str]], str]:
    """(content, calls as a client accumulates them, finish_reason) of a streamed answer."""
    content, calls, reason = "", {}, ""
    for part, choice in _tool_deltas(app, **extra):
        content += choice.delta.content or ""
        reason = choice.finish_reason or reason
        if part is not None:
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += part.id or ""
            call["name"] += part.function.name or ""
            call["arguments"] += part.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)], reason


def _tool_deltas(app: App, **extra: Any) -> Iterator[tuple[Any, Any]]:
    """(tool-call delta or None, choice) for every streamed choice and every call part."""
    for chunk in _ask(app, stream=True, **extra):
        for choice in chunk.choices:
            yield None, choice
            for part in choice.delta.tool_calls or []:
                yield part, choice


def test_a_call_is_parsed_into_tool_calls(scripted: App) -> None:
    _script(scripted, "I will check.\n" + CALL)
    choice = _ask(scripted).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I will check.\n"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_content_is_null_when_only_calls(scripted: App) -> None:
    _script(scripted, CALL + "\n" + CALL)
    message = _ask(scripted).choices[0].message
    assert message.content is None
    assert [c.function.name for c in message.tool_calls] == ["get_weather"] * 2
    assert len({c.id for c in message.tool_calls}) == 2


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_streaming_gives_the_same_calls(scripted: App, size: int) -> None:
    _script(scripted, "Checking.\n" + CALL + "\n" + CALL.replace("Paris", "Oslo"), size)
    content, calls, reason = _streamed(scripted)
    assert reason == "tool_calls"
    assert content == "Checking.\n"
    assert [c["name"] for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert all(c["id"].startswith("call_") for c in calls)


def test_logprobs_and_usage_survive_the_parsing(scripted: App) -> None:
    """Every token's logprob is streamed once, whichever chunk carries it; usage follows."""
    _script(scripted, "Checking.\n" + CALL, 4)
    tokens, usage, reasons = [], None, []
    stream = _ask(scripted, stream=True, logprobs=True, stream_options={"include_usage": True})
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            tokens += [t.token for t in (choice.logprobs.content if choice.logprobs else [])]
    assert "".join(tokens) == "Checking.\n" + CALL
    assert reasons[-1] == "tool_calls" and usage is not None
    reply = _ask(scripted, logprobs=True).choices[0]
    assert reply.finish_reason == "tool_calls" and reply.logprobs is not None
    assert "".join(t.token for t in reply.logprobs.content or []) == "Checking.\n" + CALL


def test_text_without_calls_streams_as_content(scripted: App) -> None:
    _script(scripted, "It is <sunny> today.", 2)
    content, calls, reason = _streamed(scripted)
    assert (content, calls, reason) == ("It is <sunny> today.", [], "stop")


def test_tool_choice_none_parses_nothing(scripted: App) -> None:
    _script(scripted, CALL)
    choice = _ask(scripted, tool_choice="none").choices[0]
    assert (choice.finish_reason, choice.message.content) == ("stop", CALL)
    assert not choice.message.tool_calls
    assert _streamed(scripted, tool_choice="none") == (CALL, [], "stop")


def test_required_is_asked_for_and_masked_to_calls(scripted: App) -> None:
    """``required`` is in the prompt and in a grammar of call blocks (the grammar's effect
    on a model: tests/server/test_tool_grammar.py); ``auto`` carries no grammar."""
    _script(scripted, CALL)
    _ask(scripted, tool_choice="auto")
    assert _grammar(scripted) is None
    choice = _ask(scripted, tool_choice="required").choices[0]
    assert choice.finish_reason == "tool_calls"
    assert "You must call at least one function." in _prompt_text(scripted)
    grammar = _grammar(scripted)
    assert grammar is not None and grammar.param == "tool_choice"
    assert grammar.kind == "lark" and '{"const": "get_weather"}' in grammar.source


def _grammar(app: App) -> GrammarSpec | None:
    engine = app.engine
    assert isinstance(engine, ScriptedEngine)
    return engine.grammars[-1]


NAMED = {"type": "function", "function": {"name": "get_weather"}}
LONG_CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2.50],'
    ' "note": "say \\"}\\" {"}}\n</tool_call>'
)


@pytest.mark.parametrize("choice", ["required", NAMED])
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_forced_calls_stream_their_arguments_in_pieces(
    scripted: App, choice: Any, size: int
) -> None:
    """Under a forcing tool_choice the name goes out first, then the arguments as the
    model writes them (text as written: no re-encoding), adding up to the whole answer's."""
    _script(scripted, LONG_CALL, size)
    whole = _ask(scripted, tool_choice=choice).choices[0].message.tool_calls
    parts = [part for part, _ in _tool_deltas(scripted, tool_choice=choice) if part is not None]
    assert parts[0].id.startswith("call_") and parts[0].type == "function"
    assert (parts[0].function.name, parts[0].function.arguments) == ("get_weather", "")
    pieces = [part.function.arguments for part in parts[1:]]
    assert all(part.id is None and part.function.name is None for part in parts[1:])
    assert "".join(pieces) == whole[0].function.arguments
    assert whole[0].function.arguments == LONG_CALL.split('"arguments": ')[1].split("}\n</")[0]
    if size < len(LONG_CALL):  # as the text arrives, not in one piece at the block's close
        assert len(pieces) > 1


@pytest.mark.parametrize("stream", [False, True])
def test_finish_reasons_are_openais(scripted: App, stream: bool) -> None:
    """tool_calls for calls under auto and required; stop for a named choice; length for a
    reply cut at max_tokens, whatever complete calls it holds."""

    def reason(**extra: Any) -> str:
        if stream:
            return _streamed(scripted, **extra)[2]
        return str(_ask(scripted, **extra).choices[0].finish_reason)

    _script(scripted, CALL)
    assert [reason(), reason(tool_choice="required"), reason(tool_choice=NAMED)] == [
        "tool_calls",
        "tool_calls",
        "stop",
    ]
    engine = scripted.engine
    assert isinstance(engine, ScriptedEngine)
    engine.reason = "length"
    _script(scripted, CALL + "\n" + CALL[:30])
    assert {reason(), reason(tool_choice="required"), reason(tool_choice=NAMED)} == {"length"}


def test_a_forced_call_cut_at_max_tokens_keeps_what_was_written(scripted: App) -> None:
    """As OpenAI answers a call cut by length: the call, with its arguments so far."""
    engine = scripted.engine
    assert isinstance(engine, ScriptedEngine)
    engine.reason = "length"
    _script(scripted, CALL[: CALL.index("Paris") + 2])
    choice = _ask(scripted, tool_choice=NAMED).choices[0]
    assert choice.finish_reason == "length" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Pa')
    assert _streamed(scripted, tool_choice=NAMED)[1][0]["arguments"] == '{"city": "Pa'


def test_a_named_choice_keeps_only_that_function(scripted: App) -> None:
    search = {"type": "function", "function": {"name": "search"}}
    _script(scripted, CALL)
    named = {"type": "function", "function": {"name": "search"}}
    choice = (
        scripted.openai()
        .chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER, search],
            tool_choice=named,
        )
        .choices[0]
    )
    assert (choice.finish_reason, choice.message.content) == ("stop", CALL)
    assert "You must call the function search." in _prompt_text(scripted)
    grammar = _grammar(scripted)
    assert grammar is not None and '{"const": "search"}' in grammar.source
    assert "get_weather" not in grammar.source


def _prompt_text(app: App) -> str:
    """The last prompt's messages, as the chat template saw them."""
    engine = app.engine
    assert isinstance(engine, ScriptedEngine)
    return "\n".join(f"{m['role']}: {m['content']}" for m in engine.prompts[-1])


def test_a_growing_tool_history_is_rendered_and_reused(scripted: App) -> None:
    client = scripted.openai()
    history: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    _script(scripted, CALL)
    first = client.chat.completions.create(model="fake", messages=history, tools=[WEATHER])
    assert _prompt_text(scripted).startswith("system: Be brief.\n\nYou may call functions")
    message = first.choices[0].message
    history.append(message.model_dump(exclude_none=True))
    call_id = message.tool_calls[0].id
    history.append({"role": "tool", "tool_call_id": call_id, "content": '{"sky": "clear"}'})
    _script(scripted, "Clear skies.")
    second = client.chat.completions.create(model="fake", messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == "Clear skies."
    text = _prompt_text(scripted)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert 'user: <tool_response>\n{"sky": "clear"}\n</tool_response>' in text
    # The first prompt, but for its assistant opening, begins the second: reused.
    opening = len("assistant\n") + 1  # the marker token and the role line
    reusable = first.usage.prompt_tokens - opening
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert reusable - 4 < cached <= second.usage.prompt_tokens  # 4: the fake's block


def test_tokenize_renders_tools_as_a_request_does(scripted: App) -> None:
    _script(scripted, "ok")
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    body = {"messages": messages, "tools": [WEATHER], "tool_choice": "required"}
    counted = scripted.http.post("/tokenize", json=body).json()["count"]
    assert counted == _ask(scripted, tool_choice="required").usage.prompt_tokens
    bare = scripted.http.post("/tokenize", json={"messages": messages}).json()["count"]
    assert bare < counted


BAD = [
    ({"tools": {"a": 1}}, "tools"),
    ({"tools": [{"type": "code", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
        "tools[0].function.parameters",
    ),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
        "tool_choice.function.name",
    ),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
]


@pytest.mark.parametrize(("extra", "param"), BAD)
def test_bad_tools_are_400s_naming_the_field(app: App, extra: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    response = app.http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_malformed_past_call_is_a_400(app: App) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        app.openai().chat.completions.create(model="fake", messages=messages)
    body: Any = caught.value.body
    assert body["param"] == "messages[1].tool_calls[0].function.arguments"


def test_every_choice_of_n_is_parsed_on_its_own(scripted: App) -> None:
    _script(scripted, "I will check.\n" + CALL)
    choices = _ask(scripted, n=3).choices
    assert [c.index for c in choices] == [0, 1, 2]
    for choice in choices:
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert json.loads(call.function.arguments) == {"city": "Paris"}
    by_index: dict[int, list[str]] = {}
    for chunk in _ask(scripted, n=3, stream=True):
        for choice in chunk.choices:
            for part in choice.delta.tool_calls or []:
                by_index.setdefault(choice.index, []).append(part.function.arguments or "")
    assert sorted(by_index) == [0, 1, 2]
    assert all(json.loads("".join(parts)) == {"city": "Paris"} for parts in by_index.values())
