"""The tool-call parser: unit cases, and properties (arguments round-trip; any split of the
text into deltas gives the same calls and text as the whole; under a forcing tool_choice,
the arguments' pieces of any split add up to the whole parse's arguments)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.server.tool_calls import (
    ArgumentsPiece,
    CallScanner,
    CallStart,
    Event,
    Text,
    ToolCall,
    calls_of,
    scan,
)
from prefixkv.server.tool_fragments import ForcedCallScanner

NAMES = frozenset({"get_weather", "search"})


def _scanner(parallel: bool = True, names: frozenset[str] = NAMES) -> CallScanner:
    counter = iter(range(1000))
    return CallScanner(names, parallel, ids=lambda: f"call_{next(counter)}")


def _block(name: str, arguments: Any) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def _merged(events: list[Event]) -> list[Event]:
    """Adjacent Text events joined, and adjacent pieces of one call's arguments (a stream
    may cut text anywhere)."""
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, Text) and isinstance(last, Text):
            out[-1] = Text(last.text + event.text)
        elif (
            isinstance(event, ArgumentsPiece)
            and isinstance(last, ArgumentsPiece)
            and last.index == event.index
        ):
            out[-1] = ArgumentsPiece(event.index, last.text + event.text)
        else:
            out.append(event)
    return out


def test_plain_text_is_all_content() -> None:
    text = "No call here, just <tool text and </tool_call> a stray close."
    assert scan(text, _scanner()) == [Text(text)]


def test_calls_are_parsed_with_the_text_around_them() -> None:
    text = "Let me look.\n" + _block("get_weather", {"city": "Paris"}) + "\n"
    text += _block("search", {"q": "x"}) + "\nDone."
    events = scan(text, _scanner())
    assert events == [
        Text("Let me look.\n"),
        ToolCall(0, "call_0", "get_weather", '{"city": "Paris"}'),
        ToolCall(1, "call_1", "search", '{"q": "x"}'),
        Text("\nDone."),
    ]


def test_whitespace_only_text_around_calls_is_dropped() -> None:
    text = "\n " + _block("search", {}) + "\n\n" + _block("search", {}) + "\n"
    events = scan(text, _scanner())
    assert [type(e) for e in events] == [ToolCall, ToolCall]


def test_whitespace_without_calls_is_kept() -> None:
    assert scan("  \n", _scanner()) == [Text("  \n")]


def test_blocks_that_are_not_calls_stay_text() -> None:
    bad = [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "search", "arguments": "a string"}</tool_call>',
        '<tool_call>["search"]</tool_call>',
        '<tool_call>{"name": "search", "arguments": {}}',  # never closed
    ]
    for text in bad:
        assert scan(text, _scanner()) == [Text(text)], text


def test_missing_arguments_mean_none() -> None:
    events = scan('<tool_call>{"name": "search"}</tool_call>', _scanner())
    assert events == [ToolCall(0, "call_0", "search", "{}")]


def test_a_second_call_stays_text_without_parallel_calls() -> None:
    second = _block("search", {"q": 2})
    events = scan(_block("search", {"q": 1}) + "\n" + second, _scanner(parallel=False))
    assert events == [ToolCall(0, "call_0", "search", '{"q": 1}'), Text("\n" + second)]


def test_a_named_choice_allows_only_that_name() -> None:
    other = _block("search", {})
    events = scan(other + _block("get_weather", {}), _scanner(names=frozenset({"get_weather"})))
    assert events == [Text(other), ToolCall(0, "call_0", "get_weather", "{}")]


def test_a_closing_tag_inside_a_string_does_not_close_the_call() -> None:
    arguments = {"q": 'say "</tool_call>" \\ twice </tool_call>'}
    events = scan(_block("search", arguments), _scanner())
    assert len(events) == 1 and isinstance(events[0], ToolCall)
    assert json.loads(events[0].arguments) == arguments


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
ARGUMENTS = st.dictionaries(st.text(), JSON, max_size=5)
# Text between calls: anything that does not itself open a call.
PROSE = st.text().filter(lambda t: "<tool_call>" not in t)


@given(st.lists(st.tuples(st.sampled_from(sorted(NAMES)), ARGUMENTS), max_size=3), PROSE)
@settings(max_examples=200, deadline=None)
def test_any_json_arguments_round_trip(calls: list[tuple[str, Any]], prose: str) -> None:
    text = prose + "".join(_block(name, arguments) for name, arguments in calls)
    events = scan(text, _scanner())
    parsed = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls
    assert [c.index for c in parsed] == list(range(len(calls)))
    content = "".join(e.text for e in events if isinstance(e, Text))
    assert content == ("" if calls and prose.isspace() else prose)


PIECES = st.one_of(
    PROSE,
    st.sampled_from(["<tool_call>", "</tool_call>", "<tool_", "\n", " ", '"', "\\"]),
    st.builds(_block, st.sampled_from([*sorted(NAMES), "other"]), ARGUMENTS),
)


@given(st.lists(PIECES, max_size=8), st.lists(st.integers(0, 400), max_size=12), st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_split_into_deltas_gives_the_same_events(
    pieces: list[str], cuts: list[int], parallel: bool
) -> None:
    text = "".join(pieces)
    whole = _merged(scan(text, _scanner(parallel)))
    stream = _scanner(parallel)
    events: list[Event] = []
    bounds = sorted({min(c, len(text)) for c in cuts})
    for start, end in zip([0, *bounds], [*bounds, len(text)], strict=True):
        events += stream.feed(text[start:end])
    events += stream.finish()
    assert _merged(events) == whole
    if not any(isinstance(e, ToolCall) for e in events):  # then nothing is dropped
        assert "".join(e.text for e in events if isinstance(e, Text)) == text


def _forced(parallel: bool = True) -> ForcedCallScanner:
    counter = iter(range(1000))
    return ForcedCallScanner(NAMES, parallel, ids=lambda: f"call_{next(counter)}")


def _split(text: str, cuts: list[int], scanner: CallScanner) -> list[Event]:
    """``text`` fed to ``scanner`` in the deltas ``cuts`` (offsets) make, then finished."""
    events: list[Event] = []
    bounds = sorted({min(c, len(text)) for c in cuts})
    for start, end in zip([0, *bounds], [*bounds, len(text)], strict=True):
        events += scanner.feed(text[start:end])
    return events + scanner.finish()


def test_the_arguments_are_the_text_the_model_wrote() -> None:
    """Not re-encoded: non-ASCII, number spellings and spacing stay as written."""
    written = '{"city":"Zürich", "days": [1.50, 2e1]}'
    for scanner in (_scanner(), _forced()):
        (call,) = calls_of(
            scan(f'<tool_call>{{"name": "search", "arguments": {written}}}</tool_call>', scanner)
        )
        assert call.arguments == written


def test_a_forced_call_streams_its_name_then_its_arguments() -> None:
    scanner = _forced()
    assert scanner.feed('<tool_call>\n{"name": "search", "argu') == []
    assert scanner.feed('ments": {"q": "a}') == [
        CallStart(0, "call_0", "search"),
        ArgumentsPiece(0, '{"q": "a}'),
    ]
    assert scanner.feed('"}}\n</tool_call> done') == [ArgumentsPiece(0, '"}'), Text(" done")]
    assert scanner.finish() == []


def test_a_forced_block_of_another_form_is_judged_whole() -> None:
    """Arguments before the name, an unknown name, a second call without parallel calls:
    not streamed; the first is a call at its close, the others text."""
    reversed_call = '<tool_call>{"arguments": {"q": 1}, "name": "search"}</tool_call>'
    events = _merged(
        scan(reversed_call + _block("other", {}) + _block("search", {}), _forced(False))
    )
    assert [type(e) for e in events] == [ToolCall, Text]
    assert isinstance(events[0], ToolCall) and events[0].arguments == '{"q": 1}'


def _forced_block(name: str, arguments: Any, ascii_only: bool, compact: bool) -> str:
    separators = (",", ":") if compact else (", ", ": ")
    written = json.dumps(arguments, ensure_ascii=ascii_only, separators=separators)
    return f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": {written}}}\n</tool_call>'


FORCED_BLOCKS = st.builds(
    _forced_block,
    st.sampled_from([*sorted(NAMES), "other"]),
    ARGUMENTS,
    st.booleans(),
    st.booleans(),
)


@given(
    st.lists(st.one_of(FORCED_BLOCKS, PIECES), max_size=6),
    st.lists(st.integers(0, 400), max_size=12),
    st.integers(0, 2000),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_forced_pieces_of_any_split_add_up_to_the_whole_parse(
    pieces: list[str], cuts: list[int], cut_at: int, parallel: bool
) -> None:
    """Any text (cut anywhere at its end, as max_tokens cuts it), any split into deltas:
    the same events as the whole text in one delta, so the same calls and arguments."""
    text = "".join(pieces)[:cut_at]
    whole = scan(text, _forced(parallel))
    streamed = _split(text, cuts, _forced(parallel))
    assert _merged(streamed) == _merged(whole)
    assert calls_of(streamed) == calls_of(whole)


@given(st.lists(st.tuples(st.sampled_from(sorted(NAMES)), ARGUMENTS, st.booleans()), max_size=3))
@settings(max_examples=200, deadline=None)
def test_forced_calls_round_trip(calls: list[tuple[str, Any, bool]]) -> None:
    """Complete blocks (what the forcing grammar writes): every call, arguments as written."""
    blocks = [
        _forced_block(name, arguments, ascii_only, False) for name, arguments, ascii_only in calls
    ]
    parsed = calls_of(_split("\n".join(blocks), [7, 19, 40, 41, 90], _forced()))
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [(n, a) for n, a, _ in calls]
    assert [c.arguments for c in parsed] == [
        json.dumps(a, ensure_ascii=ascii_only) for _, a, ascii_only in calls
    ]
