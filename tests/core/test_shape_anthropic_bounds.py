"""Anthropic Messages bodies in the request shape, and the bounds a prompt's token count must
respect (what a backend may claim about a request of this size)."""

from __future__ import annotations

from typing import Any

import pytest
import quicktok
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_dualpool.core.shape import (
    TEMPLATE_TOKENS_PER_MESSAGE,
    TEMPLATE_TOKENS_PER_REQUEST,
    prompt_tokens_plausible,
    prompt_tokens_upper_bound,
    shape_request,
)
from tests.shared_prompts import mt_bench_prose

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}}
TOOL = {"name": "look", "description": "Looks at a thing.",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}


def messages_body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}],
            **extra}


@pytest.mark.parametrize("system", ["S" * 20_000, [{"type": "text", "text": "S" * 12_000},
                                                    {"type": "text", "text": "S" * 8_000,
                                                     "cache_control": {"type": "ephemeral"}}]],
                         ids=["string", "text blocks"])
def test_the_top_level_system_prompt_is_counted(system: Any) -> None:
    plain = shape_request(messages_body())
    shape = shape_request(messages_body(system=system))
    assert shape.text_bytes == plain.text_bytes + 20_000
    assert shape.message_count == plain.message_count + 1  # framed like a message


def test_tool_use_and_tool_result_blocks_are_counted_as_tools_and_content() -> None:
    body = messages_body(tools=[TOOL], messages=[
        {"role": "user", "content": "What is in the picture?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should look.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "b64data"},
            {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": "cat"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1",
             "content": [{"type": "text", "text": "a cat on a mat"}, IMAGE]},
            {"type": "tool_result", "tool_use_id": "t2", "content": "plain result"},
            {"type": "text", "text": "and?"}]}])
    shape = shape_request(body)
    texts = ["What is in the picture?", "I should look.", "a cat on a mat", "plain result", "and?"]
    assert shape.text_bytes == sum(len(t) for t in texts)
    # the tool definition, the call (1 + its name + input as JSON) and the two results
    assert shape.tool_count == 4 and shape.has_tools
    assert shape.image_count == 1  # the image inside a tool result
    structured_call = len("look") + len('{"q": "cat"}') + len("b64data")
    assert shape.structured_bytes > structured_call  # plus the definition with its input_schema


def test_a_tool_definition_counts_its_input_schema() -> None:
    small = shape_request(messages_body(tools=[{"name": "f", "input_schema": {}}]))
    big = shape_request(messages_body(tools=[{"name": "f", "input_schema": {
        "type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 50}
                                         for i in range(20)}}}]))
    assert big.structured_bytes - small.structured_bytes > 20 * 50


def test_the_upper_bound_holds_bytes_template_and_tools() -> None:
    shape = shape_request({"messages": [{"role": "user", "content": "x" * 100}]})
    assert prompt_tokens_upper_bound(shape) == (100 + TEMPLATE_TOKENS_PER_REQUEST
                                                + TEMPLATE_TOKENS_PER_MESSAGE)
    with_image = shape_request({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "u"}}]}]})
    assert prompt_tokens_upper_bound(with_image) is None  # an image's tokens do not follow bytes


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=400), min_size=1, max_size=4))
def test_no_real_tokenizer_exceeds_the_upper_bound(contents: list[str]) -> None:
    """Llama-3 and cl100k (byte-level BPE), on any text: never more tokens than the bound, here
    with Llama-3's own chat framing (4 per message + 1)."""
    body = {"messages": [{"role": "user", "content": c} for c in contents]}
    upper = prompt_tokens_upper_bound(shape_request(body))
    assert upper is not None
    for name in ("llama3", "cl100k_base"):
        encoding = quicktok.get_encoding(name)
        count = 1 + sum(4 + len(encoding.encode(c)) for c in contents)
        assert count <= upper


@pytest.mark.parametrize(("tokens", "plausible"), [
    (1_000, True),            # ~4.5 bytes/token: real prose
    (4_600, True),            # one byte a token plus template: the most a tokenizer gives
    (9_999, False),           # more tokens than bytes and template
    (560, False),             # 8.2 bytes/token: above the calibration's ceiling (8)
    (0, False),
])
def test_a_stated_count_must_fit_the_request_size(tokens: int, plausible: bool) -> None:
    shape = shape_request({"messages": [{"role": "user", "content": mt_bench_prose(4_600)}]})
    assert shape.total_bytes == pytest.approx(4_600, abs=200)
    assert prompt_tokens_plausible(shape, tokens, max_bytes_per_token=8.0) is plausible


def test_a_media_request_never_teaches_a_stated_count() -> None:
    shape = shape_request({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "u"}}]}]})
    assert not prompt_tokens_plausible(shape, 800, max_bytes_per_token=8.0)
