"""The tool-call parser: unit cases, and properties (arguments round-trip; any split of the
text into deltas gives the same calls and text as the whole)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.server.tool_calls import CallScanner, Event, Text, ToolCall, scan

NAMES = frozenset({"get_weather", "search"})


def _scanner(parallel: bool = True, names: frozenset[str] = NAMES) -> CallScanner:
    counter = iter(range(1000))
    return CallScanner(names, parallel, ids=lambda: f"call_{next(counter)}")


def _block(name: str, arguments: Any) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def _merged(events: list[Event]) -> list[Event]:
    """Adjacent Text events joined (a stream may cut text anywhere)."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + event.text)
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
