"""Exact prompt token counts, the way a vLLM server computes them, and filler output text.

A vLLM server renders a chat request through the model's chat template (HF's
``apply_chat_template`` with ``add_generation_prompt=True``) and tokenizes the rendered text
with ``add_special_tokens=False`` (the template already carries BOS); special-token strings in
the text are parsed as special tokens, as HF tokenizers do. A completions request is tokenized
with ``add_special_tokens=True`` (Llama-3 prepends ``<|begin_of_text|>``, Qwen3 adds nothing);
token-id prompts are taken as they are.

The templates are the project's shared ones (:mod:`litellm_dualpool.core.chat_template`: Llama-3
and Qwen3/ChatML framing, tool definitions and calls included) and the counts are
``quicktok``'s exact Llama-3 and Qwen3 BPE, equal to :mod:`litellm_dualpool.tokenize`'s (the
tests check it) but linear in the prompt size, so the emulator reports the same
``usage.prompt_tokens`` the estimator benchmark takes as truth. On top, the
emulator does what a text-only vLLM does and the shared renderer does not: it refuses media
parts and malformed messages, and adds Qwen3's empty ``<think>`` block when
``chat_template_kwargs.enable_thinking`` is false.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import quicktok

from litellm_dualpool.core.chat_template import render_prompt
from litellm_dualpool.errors import InvalidRequestError
from litellm_dualpool.tokenize import count_text_tokens

#: Tokenizer names we serve, mapped to quicktok encodings.
TOKENIZERS = ("llama3", "qwen3")

#: What Qwen3's template appends to the generation prompt when thinking is switched off.
QWEN3_NO_THINKING = "<think>\n\n</think>\n\n"
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

    @property
    def max_chars_per_token(self) -> int:
        """Longest vocabulary entry in characters (vLLM's bound for a pre-tokenization check)."""
        return _max_chars_per_token(self.tokenizer)

    def count_text(self, text: str, *, add_bos: bool = False) -> int:
        """Tokens in ``text`` with special-token strings parsed as specials (HF behaviour)."""
        bos = 1 if add_bos and self.tokenizer == "llama3" else 0
        return bos + count_text_tokens(text, self.tokenizer)

    def token_ids(self, text: str, *, add_bos: bool = False) -> list[int]:
        """The ids of ``text`` (special-token strings as specials), as /tokenize lists them;
        as many as `count_text` counts."""
        enc = quicktok.get_encoding(self.tokenizer)
        ids = list(enc.encode_with_special(text))
        if add_bos and self.tokenizer == "llama3":
            ids.insert(0, int(enc.encode_single_token("<|begin_of_text|>")))
        return ids

    def render_chat(self, body: Mapping[str, Any]) -> str:
        """The chat template applied to a chat body (messages, tools) plus the generation prompt."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise PromptError("messages must be a non-empty list")
        for i, message in enumerate(messages):
            _check_message(i, message)
        try:
            text = render_prompt(body, self.tokenizer)
        except InvalidRequestError as exc:
            raise PromptError(str(exc)) from None
        kwargs = body.get("chat_template_kwargs")
        if self.tokenizer == "qwen3" and isinstance(kwargs, Mapping) and kwargs.get("enable_thinking") is False:
            text += QWEN3_NO_THINKING
        return text

    def chat(self, body: Mapping[str, Any]) -> RenderedPrompt:
        text = self.render_chat(body)
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


def _check_message(index: int, message: Any) -> None:
    if not isinstance(message, dict):
        raise PromptError(f"messages[{index}] must be an object")
    if not isinstance(message.get("role"), str):
        raise PromptError(f"messages[{index}].role must be a string")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise PromptError(f"messages[{index}].content must be a string or a list of parts")
    for j, part in enumerate(content):
        if isinstance(part, str):
            continue
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            continue
        if isinstance(part, dict) and isinstance(part.get("type"), str):
            raise PromptError(f"messages[{index}].content[{j}]: content part type {part['type']!r} is "
                              "not supported by this text-only model")
        raise PromptError(f"messages[{index}].content[{j}] is not a valid content part")
