"""The conformance suite's shapes: what a shape keeps (types, the contract's values, counts
where they are the contract), how items and chunks merge, and that every kind of difference
is found, and known ones explained by case and path."""

from __future__ import annotations

from typing import Any

from prefixkv.bench.conformance_known import explained, unexplained
from prefixkv.bench.conformance_shapes import (
    Difference,
    differences,
    merged,
    shape,
    stream_shape,
)


def chat(**choice: Any) -> dict[str, Any]:
    base = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "x"}}
    return {"object": "chat.completion", "created": 1, "choices": [{**base, **choice}]}


def test_a_shape_keeps_types_and_the_contracts_values() -> None:
    assert shape(chat()) == {
        "object": '="chat.completion"',
        "created": "int",
        "choices": {
            "[]": {
                "index": "=0",
                "finish_reason": '="stop"',
                "message": {"role": '="assistant"', "content": "str"},
            },
            "len": "=1",
        },
    }


def test_counts_are_kept_where_they_are_the_contract() -> None:
    two = {"choices": [{"index": 0}, {"index": 1}]}
    assert shape(two)["choices"] == {"[]": {"index": "=0|=1"}, "len": "=2"}
    tokens = {"choices": [{"logprobs": {"content": [{"logprob": -1.0}] * 3}}]}
    assert "len" not in shape(tokens)["choices"]["[]"]["logprobs"]["content"]
    maps = {"choices": [{"logprobs": {"top_logprobs": [{" a": -0.1, " b": -2.0}]}}]}
    found = shape(maps)["choices"]["[]"]["logprobs"]["top_logprobs"]
    assert found == {"[]": {"<token>": "float"}}  # tokens are text, not keys of the contract


def test_merging_marks_optional_keys_and_scalar_alternatives() -> None:
    first = shape({"delta": {"role": "assistant"}, "logprobs": None})
    last = shape({"delta": {"content": "x"}, "logprobs": {"content": []}})
    assert merged([first, last]) == {
        "delta": {"role": '="assistant"', "content": "str", "?": ["content", "role"]},
        "logprobs": {"content": {"[]": None}, "|": "null"},
    }
    assert merged([]) is None


def test_every_kind_of_difference_is_found() -> None:
    ours = shape(chat())
    assert differences(ours, shape(chat())) == []
    assert differences(ours, shape(chat(finish_reason="length"))) == [
        Difference("choices[].finish_reason", '="stop"', '="length"')
    ]
    assert differences(ours, shape(chat(stop_reason=None))) == [
        Difference("choices[].stop_reason", "absent", "null")
    ]
    assert differences(shape(chat(logprobs=None)), shape(chat(logprobs={"content": []}))) == [
        Difference("choices[].logprobs", "null", '{"content": {"[]": null}}')
    ]
    sometimes = stream_shape([{"usage": None}, {}])
    always = stream_shape([{"usage": None}, {"usage": None}])
    assert differences(sometimes, always) == [
        Difference("stream.usage", "in some items", "in every item")
    ]


def test_known_differences_are_explained_by_case_and_path() -> None:
    extension = Difference("choices[].stop_reason", "absent", "null")
    assert explained("chat", extension) is not None
    content = Difference("choices[].message.content", "null", '=""')
    assert explained("chat-tool-named", content) is not None
    assert unexplained("chat", [extension, content]) == [content]  # only for a named tool
    # "[]" in a pattern is a list's items, not a character set
    arguments = "stream.choices[].delta.tool_calls[].function.arguments"
    assert explained("chat-tool-named-stream", Difference(arguments, "a", "b")) is not None
    assert explained("chat-tool-named-stream", Difference(arguments + "x", "a", "b")) is None
