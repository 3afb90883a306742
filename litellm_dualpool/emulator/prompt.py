"""Exact prompt token counts, the way a vLLM server computes them, and filler output text.

A vLLM server renders a chat request through the model's chat template (HF's
``apply_chat_template`` with ``add_generation_prompt=True``) and tokenizes the rendered text
with ``add_special_tokens=False`` (the template already carries BOS); special-token strings in
the text are parsed as special tokens, as HF tokenizers do. A completions request is tokenized
with ``add_special_tokens=True`` (Llama-3 prepends ``<|begin_of_text|>``, Qwen3 adds nothing);
token-id prompts are taken as they are. We reproduce both with ``quicktok`` (exact Llama-3 and
Qwen3 BPE) and hand-written equivalents of the two templates:

* Llama-3 Instruct: ``<|begin_of_text|>`` then per message
  ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content.strip()}<|eot_id|>``, then
  ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``.
* Qwen3: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message (assistant turns lose
  their ``<think>`` blocks), then ``<|im_start|>assistant\\n``, plus
  ``<think>\\n\\n</think>\\n\\n`` when ``chat_template_kwargs.enable_thinking`` is false.

Content given as a list of parts is joined with newlines (vLLM's "string" content format).
Tool definitions and tool calls are not rendered (the Llama-3 template has none); media parts
are refused by the emulated text-only model.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import quicktok

#: Tokenizer names we serve, mapped to quicktok encodings.
TOKENIZERS = ("llama3", "qwen3")

#: One-token words (in both Llama-3 and Qwen3) cycled to build generated text whose token count
#: is exactly the completion token count we report.
FILLER_WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog")


class PromptError(ValueError):
    """A request whose prompt cannot be rendered (wrong types, media parts)."""


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """The prompt as the engine sees it: its text (None for token-id prompts) and length."""

    text: str | None
    token_count: int


class PromptCounter:
    """Renders and counts prompts for one tokenizer (``"llama3"`` or ``"qwen3"``)."""

    def __init__(self, tokenizer: str) -> None:
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {tokenizer!r}; choose one of {TOKENIZERS}")
        self.tokenizer = tokenizer
        self._encoding = quicktok.get_encoding(tokenizer)

    @property
    def max_chars_per_token(self) -> int:
        """Longest vocabulary entry in characters (vLLM's bound for a pre-tokenization check)."""
        return _max_chars_per_token(self.tokenizer)

    def count_text(self, text: str, *, add_bos: bool = False) -> int:
        """Tokens in ``text`` with special-token strings parsed as specials (HF behaviour)."""
        bos = 1 if add_bos and self.tokenizer == "llama3" else 0
        return bos + len(self._encoding.encode(text, allowed_special="all"))

    def render_chat(self, messages: Any, chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The chat template applied to ``messages`` with the generation prompt appended."""
        if not isinstance(messages, list) or not messages:
            raise PromptError("messages must be a non-empty list")
        turns = [_turn(i, m) for i, m in enumerate(messages)]
        if self.tokenizer == "llama3":
            return _render_llama3(turns)
        thinking = (chat_template_kwargs or {}).get("enable_thinking", True)
        return _render_qwen3(turns, enable_thinking=thinking is not False)

    def chat(self, messages: Any, chat_template_kwargs: Mapping[str, Any] | None = None) -> RenderedPrompt:
        text = self.render_chat(messages, chat_template_kwargs)
        return RenderedPrompt(text, self.count_text(text))

    def completion_prompts(self, prompt: Any) -> list[RenderedPrompt]:
        """The prompts of a /v1/completions body: a string, token ids, or a batch of either."""
        if isinstance(prompt, str):
            return [RenderedPrompt(prompt, self.count_text(prompt, add_bos=True))]
        if isinstance(prompt, list) and prompt and all(_is_token_id(t) for t in prompt):
            return [RenderedPrompt(None, len(prompt))]
        if isinstance(prompt, list) and prompt:
            out: list[RenderedPrompt] = []
            for item in prompt:
                if isinstance(item, str) or (isinstance(item, list) and item and all(_is_token_id(t) for t in item)):
                    out.extend(self.completion_prompts(item))
                else:
                    raise PromptError("prompt must be a string, a list of token ids, or a list of either")
            return out
        raise PromptError("prompt must be a string, a list of token ids, or a list of either")

    def filler(self, start: int, count: int) -> str:
        """Generated text for output tokens ``start .. start+count-1``: exactly ``count`` tokens."""
        n = len(FILLER_WORDS)
        return "".join(FILLER_WORDS[i % n] for i in range(start, start + count))


@functools.cache
def _max_chars_per_token(tokenizer: str) -> int:
    # HF byte-level vocabularies spell each byte as one character, so bytes == characters.
    enc = quicktok.get_encoding(tokenizer)
    longest = 0
    for token_id in range(enc.n_vocab):
        try:
            longest = max(longest, len(enc.decode_single_token_bytes(token_id)))
        except (KeyError, ValueError):
            continue
    return longest


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class _Turn:
    role: str
    content: str


def _turn(index: int, message: Any) -> _Turn:
    if not isinstance(message, dict):
        raise PromptError(f"messages[{index}] must be an object")
    role = message.get("role")
    if not isinstance(role, str):
        raise PromptError(f"messages[{index}].role must be a string")
    return _Turn(role, _content_text(index, message.get("content")))


def _content_text(index: int, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and isinstance(part.get("type"), str):
                raise PromptError(
                    f"messages[{index}].content[{j}]: content part type {part['type']!r} is not "
                    "supported by this text-only model"
                )
            else:
                raise PromptError(f"messages[{index}].content[{j}] is not a valid content part")
        return "\n".join(texts)
    raise PromptError(f"messages[{index}].content must be a string or a list of parts")


def _render_llama3(turns: Sequence[_Turn]) -> str:
    parts = ["<|begin_of_text|>"]
    for turn in turns:
        parts.append(f"<|start_header_id|>{turn.role}<|end_header_id|>\n\n{turn.content.strip()}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def _strip_think(content: str) -> str:
    if "</think>" in content:
        return content.split("</think>")[-1].lstrip("\n")
    return content


def _render_qwen3(turns: Sequence[_Turn], *, enable_thinking: bool) -> str:
    parts = []
    for turn in turns:
        if turn.role == "assistant":
            parts.append(f"<|im_start|>assistant\n{_strip_think(turn.content)}<|im_end|>\n")
        elif turn.role == "tool":
            parts.append(f"<|im_start|>user\n<tool_response>\n{turn.content}\n</tool_response><|im_end|>\n")
        else:
            parts.append(f"<|im_start|>{turn.role}\n{turn.content}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    if not enable_thinking:
        parts.append("<think>\n\n</think>\n\n")
    return "".join(parts)
