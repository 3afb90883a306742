"""Exact prompt token counts with a real tokenizer (quicktok), after the model's chat template.

Outside the core on purpose: it imports `quicktok` (a tools/dev dependency), lazily. Used by
the estimator benchmark (the ground truth) and by the emulated vLLM server (to report the
`usage.prompt_tokens` a real server would). Chat and Responses bodies are rendered with
`core.chat_template`; completions/embeddings prompts are tokenized as they are (Llama-3 adds
`<|begin_of_text|>` like vLLM does, Qwen3 adds nothing); token-id prompts count exactly.
Media parts are not counted (only their text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from litellm_dualpool.core.chat_template import render_prompt
from litellm_dualpool.errors import InvalidRequestError

#: tokenizer (quicktok encoding name) -> chat template; other encodings use ChatML ("qwen3").
TEMPLATE_FOR_TOKENIZER = {"llama3": "llama3", "qwen3": "qwen3"}
#: Encodings whose tokenizer prepends a BOS token to a raw prompt (as vLLM does).
_BOS = {"llama3": "<|begin_of_text|>"}


@lru_cache(maxsize=8)
def _encoding(name: str) -> Any:
    import quicktok  # lazy: the core and the proxy never need it

    return quicktok.get_encoding(name)


@lru_cache(maxsize=8)
def _special_pattern(name: str) -> re.Pattern[str]:
    specials = sorted(_encoding(name).special_tokens_set, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, specials)) + ")")


def count_text_tokens(text: str, tokenizer_name: str, *, special: bool = True) -> int:
    """Tokens of `text`; `special`: known special-token strings count as one token each.

    The text is split at special tokens first (as Hugging Face tokenizers do) and the pieces are
    counted as ordinary text: quicktok's own special-token path is slow on long texts.
    """
    enc = _encoding(tokenizer_name)
    if not special or "<" not in text:  # every special token of both vocabularies starts with "<"
        return int(enc.count(text))
    pieces = _special_pattern(tokenizer_name).split(text)
    # odd indices are the special tokens captured by the split
    return sum(int(enc.count(piece)) for piece in pieces[0::2] if piece) + len(pieces) // 2


def _count_prompt(prompt: Any, tokenizer_name: str, field: str) -> int:
    bos = _BOS.get(tokenizer_name, "")
    if isinstance(prompt, str):
        return count_text_tokens(bos + prompt, tokenizer_name)
    if isinstance(prompt, list) and prompt:
        if all(type(t) is int for t in prompt):
            return len(prompt)
        return sum(_count_prompt(p, tokenizer_name, f"{field}[{i}]") for i, p in enumerate(prompt))
    raise InvalidRequestError("must be a string, a list of strings or token ids", field=field)


def count_prompt_tokens(body: Mapping[str, Any], tokenizer_name: str) -> int:
    """Exact prompt tokens of a chat, Responses, completions or embeddings body.

    tokenizer_name: a quicktok encoding ("llama3", "qwen3", "cl100k_base", ...).
    """
    if "messages" in body or "instructions" in body or (
            isinstance(body.get("input"), list)
            and any(isinstance(item, Mapping) for item in body["input"])):
        template = TEMPLATE_FOR_TOKENIZER.get(tokenizer_name, "qwen3")
        return count_text_tokens(render_prompt(body, template), tokenizer_name)
    if "prompt" in body:
        return _count_prompt(body["prompt"], tokenizer_name, "prompt")
    if "input" in body:
        return _count_prompt(body["input"], tokenizer_name, "input")
    raise InvalidRequestError("the body has none of 'messages', 'prompt' or 'input'", field="body")
