"""Recognise a backend's context-length rejection and read the token counts it states.

vLLM words it several ways across releases, in two JSON envelopes (``{"error": {...}}`` and the
older flat ``{"object": "error", ...}``); LiteLLM maps most to ``ContextWindowExceededError`` and
leaves others a plain ``BadRequestError``. We read the text, whatever the class: the phrases
below are vLLM's own, and each states the limit and (usually) the prompt's exact token count,
which is the best calibration sample there is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LIMIT = re.compile(r"maximum context length is (\d+) tokens", re.IGNORECASE)
#: vLLM's phrasings of the prompt's own token count, newest first. Current vLLM truncates while
#: tokenizing at max_model_len + 1, so "at least N" is only a lower bound: never learned from.
_PROMPT_AT_LEAST = re.compile(r"prompt contains at least (\d+) input tokens", re.IGNORECASE)
_PROMPT = (
    re.compile(r"your request has (\d+) input tokens", re.IGNORECASE),
    re.compile(r"requested \d+ tokens \((\d+) in the messages", re.IGNORECASE),
    re.compile(r"you requested (\d+) tokens in the (?:messages|input)", re.IGNORECASE),
)
_REQUESTED = re.compile(r"(?:you requested|for a total of at least) (\d+) tokens", re.IGNORECASE)
#: Words that mark a 400 as a context-length rejection even without the vLLM sentence.
_MARKERS = ("maximum context length", "context length", "context_length_exceeded")
#: Class names (LiteLLM's and OpenAI's) a context-length rejection arrives as.
_ERROR_CLASSES = ("ContextWindowExceededError", "BadRequestError")


@dataclass(frozen=True, slots=True)
class ContextRejection:
    """What a context-length rejection told us; any count may be missing from its wording."""

    limit_tokens: int | None
    prompt_tokens: int | None
    requested_tokens: int | None
    #: False when prompt_tokens is a lower bound ("at least N"): fine for logs, not for learning.
    prompt_tokens_exact: bool = True


def _classes(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def parse_context_rejection(error: BaseException | str | None) -> ContextRejection | None:
    """The rejection's numbers, or None when `error` is not a context-length rejection."""
    if error is None:
        return None
    if not isinstance(error, str):
        if not _classes(error) & set(_ERROR_CLASSES):
            return None
        text = str(getattr(error, "message", "") or "") + " " + str(error)
        if "ContextWindowExceededError" not in _classes(error) and not any(
                m in text.lower() for m in _MARKERS):
            return None
    else:
        text = error
        if not any(m in text.lower() for m in _MARKERS):
            return None
    limit = _LIMIT.search(text)
    prompt = next((m for m in (p.search(text) for p in _PROMPT) if m), None)
    at_least = None if prompt else _PROMPT_AT_LEAST.search(text)
    requested = _REQUESTED.search(text)
    count = prompt or at_least
    return ContextRejection(
        limit_tokens=int(limit.group(1)) if limit else None,
        prompt_tokens=int(count.group(1)) if count else None,
        requested_tokens=int(requested.group(1)) if requested else None,
        prompt_tokens_exact=at_least is None,
    )
