"""Request shapes: every body kind, malformed bodies (typed errors only), memory, content class."""

from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_dualpool.core.shape import ContentClass, json_size, shape_request, utf8_len
from litellm_dualpool.errors import InvalidRequestError

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather now.",
                                         "parameters": {"type": "object", "properties": {
                                             "city": {"type": "string"}}}}}
TOOL_BYTES = len(json.dumps(TOOL))

# (id, body, expected subset of the shape's fields)
VALID: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("chat string", {"messages": [{"role": "user", "content": "hello"}]},
     {"text_bytes": 5, "message_count": 1, "structured_bytes": 0, "chat_template": True}),
    ("chat utf8", {"messages": [{"role": "user", "content": "héllo 日本"}]},
     {"text_bytes": len("héllo 日本".encode())}),
    ("chat parts", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f"}}]}]},
     {"text_bytes": 3, "image_count": 1, "audio_count": 1, "file_count": 1}),
    ("null content + tool calls", {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]},
     {"text_bytes": 7, "structured_bytes": len("get_weather") + len('{"city": "Paris"}'),
      "message_count": 3, "tool_count": 1}),
    ("name field", {"messages": [{"role": "user", "name": "bob", "content": "yo"}]},
     {"text_bytes": 5}),
    ("tools", {"messages": [{"role": "user", "content": "x"}], "tools": [TOOL]},
     {"structured_bytes": TOOL_BYTES, "tool_count": 1, "has_tools": True}),
    ("legacy functions", {"messages": [{"role": "user", "content": "x"}],
                          "functions": [TOOL["function"]]},
     {"structured_bytes": len(json.dumps(TOOL["function"])), "has_tools": True}),
    ("response_format", {"messages": [{"role": "user", "content": "x"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}},
     {"structured_bytes": len(json.dumps({"name": "s", "schema": {"type": "object"}}))}),
    ("prompt string", {"prompt": "once upon"},
     {"text_bytes": 9, "chat_template": False, "message_count": 1}),
    ("prompt list", {"prompt": ["ab", "cde"]}, {"text_bytes": 5, "message_count": 2}),
    ("prompt ids", {"prompt": [1, 2, 3, 4]}, {"exact_prompt_tokens": 4, "text_bytes": 0}),
    ("prompt id lists", {"prompt": [[1, 2], [3]]}, {"exact_prompt_tokens": 3, "message_count": 2}),
    ("responses string", {"input": "hi", "instructions": "be brief"},
     {"text_bytes": 10, "message_count": 2, "chat_template": True}),
    ("responses items", {"input": [
        {"role": "user", "content": [{"type": "input_text", "text": "abc"},
                                     {"type": "input_image", "image_url": "u"}]},
        {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "1"},
        {"type": "function_call_output", "call_id": "1", "output": "ok"}]},
     {"text_bytes": 5, "structured_bytes": 3, "image_count": 1, "message_count": 3}),
    ("embeddings string", {"input": "embed me"}, {"text_bytes": 8, "chat_template": False}),
    ("embeddings list", {"input": ["a", "bb"]}, {"text_bytes": 3, "message_count": 2}),
    ("embeddings ids", {"input": [[5, 6, 7]]}, {"exact_prompt_tokens": 3}),
    ("lone surrogate", {"messages": [{"role": "user", "content": "a\ud800"}]}, {"text_bytes": 4}),
]


@pytest.mark.parametrize(("body", "expected"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_shapes(body: dict[str, Any], expected: dict[str, Any]) -> None:
    shape = shape_request(body)
    assert {k: getattr(shape, k) for k in expected} == expected


MALFORMED: list[tuple[str, Any, str]] = [
    ("not a dict", [1, 2], "body"),
    ("no payload", {"model": "x"}, "body"),
    ("messages not list", {"messages": "hi"}, "messages"),
    ("messages empty", {"messages": []}, "messages"),
    ("message not dict", {"messages": ["hi"]}, "messages[0]"),
    ("no role", {"messages": [{"content": "hi"}]}, "messages[0].role"),
    ("content int", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("part not dict", {"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]"),
    ("part no type", {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages[0].content[0].type"),
    ("text not str", {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "messages[0].content[0].text"),
    ("tool_calls not list", {"messages": [{"role": "assistant", "tool_calls": {}}]},
     "messages[0].tool_calls"),
    ("tool call no function", {"messages": [{"role": "assistant", "tool_calls": [{"id": 1}]}]},
     "messages[0].tool_calls[0].function"),
    ("arguments bad", {"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": {1, 2}}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ("name not str", {"messages": [{"role": "user", "content": "x", "name": 3}]},
     "messages[0].name"),
    ("tools not list", {"messages": [{"role": "user", "content": "x"}], "tools": {}}, "tools"),
    ("tool not dict", {"messages": [{"role": "user", "content": "x"}], "tools": [1]}, "tools[0]"),
    ("tool non-json", {"messages": [{"role": "user", "content": "x"}], "tools": [{"a": object()}]},
     "tools[0].a"),
    ("response_format str", {"messages": [{"role": "user", "content": "x"}],
                             "response_format": "json"}, "response_format"),
    ("prompt int", {"prompt": 5}, "prompt"),
    ("prompt empty", {"prompt": []}, "prompt"),
    ("prompt negative id", {"prompt": [1, -2]}, "prompt[1]"),
    ("prompt bool id", {"prompt": [1, True]}, "prompt[1]"),
    ("prompt mixed", {"prompt": ["a", 5]}, "prompt[1]"),
    ("prompt empty id list", {"prompt": [[]]}, "prompt[0]"),
    ("input dict", {"input": {"a": 1}}, "input"),
    ("input item not dict", {"input": [{"role": "user", "content": "x"}, 5]}, "input[1]"),
    ("instructions int", {"input": "x", "instructions": 3}, "instructions"),
    ("deep json", {"messages": [{"role": "user", "content": "x"}],
                   "tools": [json.loads('{"a":' * 80 + "1" + "}" * 80)]},
     "tools[0]"),
]


@pytest.mark.parametrize(("body", "field"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_shapes_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        shape_request(body)
    assert info.value.field is not None
    assert info.value.field.startswith(field)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=4),
    max_leaves=20)


@settings(max_examples=120, deadline=None)
@given(st.dictionaries(st.sampled_from(["messages", "prompt", "input", "tools", "functions",
                                        "response_format", "instructions", "text", "model"]),
                       json_values, max_size=5))
def test_fuzzed_bodies_raise_only_invalid_request(body: dict[str, Any]) -> None:
    try:
        shape = shape_request(body)
    except InvalidRequestError as exc:
        assert exc.field
    else:
        assert shape.text_bytes >= 0 and shape.structured_bytes >= 0


message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool"])},
    optional={"content": st.none() | st.text(max_size=30) | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "weird", 3]),
                               "text": json_values}), max_size=3),
              "tool_calls": st.lists(st.fixed_dictionaries(
                  {"function": st.fixed_dictionaries({"name": json_values,
                                                      "arguments": json_values})}), max_size=2),
              "name": json_values})


@settings(max_examples=120, deadline=None)
@given(st.lists(message, max_size=4))
def test_fuzzed_messages_raise_only_invalid_request(messages: list[Any]) -> None:
    try:
        shape_request({"messages": messages})
    except InvalidRequestError as exc:
        assert exc.field


@given(st.text(max_size=200))
def test_utf8_len_matches_encode(text: str) -> None:
    assert utf8_len(text) == len(text.encode("utf-8", "surrogatepass"))


def test_utf8_len_of_long_non_ascii_counts_by_chunks() -> None:
    text = "é日" * 100_000 + "x"
    assert utf8_len(text) == len(text.encode())


@given(json_values)
def test_json_size_matches_dumps_without_escapes(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    if "\\" not in text and "Infinity" not in text:
        assert json_size(value, "v") == len(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("unit", ["a", "é", "日"], ids=["ascii", "latin", "cjk"])
def test_ten_megabyte_prompt_is_not_copied(unit: str) -> None:
    text = unit * (10_000_000 // len(unit.encode()))
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": text}]}
    gc.collect()
    tracemalloc.start()
    try:
        shape = shape_request(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shape.text_bytes == len(text.encode()) + 1
    assert peak < 1_000_000, f"shaping allocated {peak} bytes at peak"


CLASSES = [
    ("prose", "The quick brown fox jumps over the lazy dog. " * 20, ContentClass.PROSE),
    ("code", "def f(x):\n    return [i * 2 for i in range(x)]  # doubled\n" * 10,
     ContentClass.CODE),
    ("japanese", "これは日本語の文章です。東京は晴れています。" * 10, ContentClass.CJK),
    ("chinese", "今天天气很好，我们去公园散步吧。" * 10, ContentClass.CJK),
    ("json text", json.dumps({"items": [{"id": i, "name": f"n{i}"} for i in range(20)]}),
     ContentClass.STRUCTURED),
    ("accented prose", "Le café est très bon, n'est-ce pas? Oui, déjà. " * 10, ContentClass.PROSE),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CLASSES], ids=[c[0] for c in CLASSES])
def test_content_class(text: str, expected: ContentClass) -> None:
    assert shape_request({"messages": [{"role": "user", "content": text}]}).content_class == expected


def test_tool_heavy_request_is_structured() -> None:
    body = {"messages": [{"role": "user", "content": "weather?"}], "tools": [TOOL, TOOL]}
    assert shape_request(body).content_class == ContentClass.STRUCTURED
