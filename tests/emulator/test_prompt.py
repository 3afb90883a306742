"""Prompt token counts after the chat template, checked against quicktok and hand counts."""

from __future__ import annotations

import pytest
import quicktok
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_dualpool.emulator.prompt import PromptCounter, PromptError
from litellm_dualpool.tokenize import count_prompt_tokens

LLAMA = PromptCounter("llama3")
QWEN = PromptCounter("qwen3")


def test_llama3_hand_counted_hello() -> None:
    # <|begin_of_text|> <|start_header_id|> user <|end_header_id|> \n\n Hello there <|eot_id|>
    # <|start_header_id|> assistant <|end_header_id|> \n\n  -> 12 tokens
    assert LLAMA.chat({"messages": [{"role": "user", "content": "Hello there"}]}).token_count == 12


def test_qwen3_hand_counted_hello() -> None:
    # <|im_start|> user \n Hello there <|im_end|> \n <|im_start|> assistant \n -> 10 tokens
    assert QWEN.chat({"messages": [{"role": "user", "content": "Hello there"}]}).token_count == 10


def test_qwen3_thinking_off_adds_empty_think_block() -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    on = QWEN.chat({"messages": messages}).token_count
    off = QWEN.chat({"messages": messages, "chat_template_kwargs": {"enable_thinking": False}}).token_count
    enc = quicktok.get_encoding("qwen3")
    assert off - on == len(enc.encode("<think>\n\n</think>\n\n", allowed_special="all"))


def test_llama3_template_matches_quicktok_on_the_rendered_string() -> None:
    messages = [
        {"role": "system", "content": "  You are terse.\n"},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and <|eot_id|> inside"},
    ]
    expected_text = (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\npart one\npart two<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nok<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nand <|eot_id|> inside<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    rendered = LLAMA.chat({"messages": messages})
    assert rendered.text == expected_text
    enc = quicktok.get_encoding("llama3")
    assert rendered.token_count == len(enc.encode(expected_text, allowed_special="all"))
    # A special-token string typed by the user is parsed as the special token (HF behaviour).
    assert rendered.token_count < len(enc.encode_ordinary(expected_text))


@pytest.mark.parametrize("tokenizer", ["llama3", "qwen3"])
def test_tools_and_tool_calls_count_like_the_shared_counter(tokenizer: str) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21}'},
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    }
    counter = LLAMA if tokenizer == "llama3" else QWEN
    rendered = counter.chat(body)
    assert rendered.token_count == count_prompt_tokens(body, tokenizer)
    assert "get_weather" in (rendered.text or "")
    without_tools = counter.chat({"messages": body["messages"]}).token_count
    assert rendered.token_count > without_tools


def test_completions_prompt_gets_bos_on_llama3_only() -> None:
    text = "The capital of France is"
    assert LLAMA.completion_prompts(text)[0].token_count == len(quicktok.get_encoding("llama3").encode(text)) + 1
    assert QWEN.completion_prompts(text)[0].token_count == len(quicktok.get_encoding("qwen3").encode(text))


def test_token_id_prompts_count_exactly_and_batches_split() -> None:
    prompts = LLAMA.completion_prompts([[1, 2, 3], "hi", [7]])
    assert [p.token_count for p in prompts] == [3, 2, 1]
    assert prompts[0].text is None and prompts[1].text == "hi"


@pytest.mark.parametrize(
    "messages",
    [None, [], "hello", [{"content": "no role"}],
     [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
     [{"role": "user", "content": 42}]],
)
def test_bad_messages_are_refused(messages: object) -> None:
    with pytest.raises(PromptError):
        LLAMA.chat({"messages": messages})


@pytest.mark.parametrize("prompt", [None, 5, [], [1, "a", 2.5], [{"x": 1}]])
def test_bad_completion_prompts_are_refused(prompt: object) -> None:
    with pytest.raises(PromptError):
        LLAMA.completion_prompts(prompt)


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 50), count=st.integers(1, 300), tokenizer=st.sampled_from(["llama3", "qwen3"]))
def test_filler_text_is_exactly_count_tokens(start: int, count: int, tokenizer: str) -> None:
    counter = LLAMA if tokenizer == "llama3" else QWEN
    assert len(quicktok.get_encoding(tokenizer).encode(counter.filler(start, count))) == count


def test_streamed_filler_pieces_concatenate_to_the_whole() -> None:
    assert "".join(LLAMA.filler(k, 1) for k in range(23)) == LLAMA.filler(0, 23)


def test_max_chars_per_token_is_the_longest_vocabulary_entry() -> None:
    assert LLAMA.max_chars_per_token == 128
    assert QWEN.max_chars_per_token == 128


SPECIAL_BITS = ["<|eot_id|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                "<|reserved_special_token_3|>", "<", "|", ">", "<|", "|>"]


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.one_of(st.sampled_from(SPECIAL_BITS), st.text(max_size=12)), max_size=12),
       tokenizer=st.sampled_from(["llama3", "qwen3"]))
def test_fast_special_aware_count_equals_quicktok(pieces: list[str], tokenizer: str) -> None:
    text = "".join(pieces)
    counter = LLAMA if tokenizer == "llama3" else QWEN
    expected = len(quicktok.get_encoding(tokenizer).encode(text, allowed_special="all"))
    assert counter.count_text(text) == expected
