"""One pass over an OpenAI-style request body: how many bytes of what kind it carries.

CONTRACT (filled in by the core issue): `shape_request` is the only entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ContentClass(StrEnum):
    """A cheap content class read from the bytes already scanned; tokenizers differ by class."""

    PROSE = "prose"
    CODE = "code"
    CJK = "cjk"
    STRUCTURED = "structured"


@dataclass(frozen=True, slots=True)
class RequestShape:
    """What a request carries, measured without a tokenizer.

    text_bytes: UTF-8 bytes of free text (message contents, prompts, inputs).
    structured_bytes: UTF-8 bytes of JSON-like payloads (tool/function definitions, tool-call
        arguments, response_format schemas).
    message_count: chat messages (each adds template framing tokens); 1 for a plain prompt.
    tool_count: tool/function definitions plus tool calls (each adds framing tokens).
    image_count / audio_count: media parts (charged a fixed token cost, never learned from).
    exact_prompt_tokens: set when the prompt is given as token ids (an exact count).
    content_class: the dominant class of the text.
    """

    text_bytes: int
    structured_bytes: int
    message_count: int
    tool_count: int
    image_count: int
    audio_count: int
    exact_prompt_tokens: int | None
    content_class: ContentClass

    @property
    def total_bytes(self) -> int:
        return self.text_bytes + self.structured_bytes


def shape_request(body: Mapping[str, Any]) -> RequestShape:
    """Shape chat `messages`, completions `prompt`, Responses `input` or embeddings `input`.

    Raises InvalidRequestError (with the field path) for malformed bodies; never anything else.
    """
    raise NotImplementedError
