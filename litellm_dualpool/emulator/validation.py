"""vLLM's length rules and error bodies, in the current and the legacy server generations.

Matched against vLLM 0.32.0 (``vllm/renderers/params.py``, ``serve/utils/api_utils.py``,
``sampling_params.py``, ``serve/exception_handling/error_response.py``), the release the
project's real-vLLM tier runs:

* **current** (``--error-format current``, the default). Body
  ``{"error": {"message", "type": "BadRequestError", "param", "code": 400}}``; a validation
  error's message ends with `` (parameter=P, value=V)``.

  - ``max_tokens`` (or ``max_completion_tokens``, which wins in chat) above max_model_len:
    ``"max_tokens=M cannot be greater than max_model_len=L. Please request fewer output
    tokens."``, param ``max_tokens``/``max_completion_tokens``.
  - rendered prompt longer than ``L * max_chars_per_token`` characters (checked before
    tokenizing): ``"...However, your prompt contains C characters (more than X characters,
    which is the upper bound for L input tokens)..."``, param ``input_text``.
  - prompt over L tokens: vLLM tokenizes with truncation at L+1, so the message always says
    ``"your prompt contains at least L+1 input tokens, which exceeds this limit even without
    any output tokens"``, param ``input_tokens`` (a token-id prompt reports its exact length,
    "at least" only when it is exactly L+1). The real prompt length is NOT in the message.
  - prompt of exactly L tokens: no room for one output token:
    ``"max_tokens must be at least 1, got 0."``, param ``max_tokens``.
  - prompt + max_tokens over L: max_tokens is silently lowered to ``L - prompt``
    (``get_max_tokens``); absent max_tokens means ``L - prompt``.

* **legacy** (``--error-format legacy``, vLLM up to about 0.9). Flat body
  ``{"object": "error", "message", "type": "BadRequestError", "param": null, "code": 400}``.
  With max_tokens: reject when prompt + max_tokens > L with ``"...However, you requested N
  tokens (P in the messages, M in the completion). Please reduce the length of the messages or
  completion."``; without: reject when prompt >= L with ``"...However, you requested P tokens in
  the messages, Please reduce the length of the messages."`` (sic).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorFormat(StrEnum):
    CURRENT = "current"
    LEGACY = "legacy"


class ApiError(Exception):
    """An error answer: HTTP status, OpenAI-style type, message and offending parameter."""

    def __init__(self, status: int, type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.param = param

    def body(self, fmt: ErrorFormat) -> dict[str, Any]:
        if fmt is ErrorFormat.LEGACY:
            return {"object": "error", "message": self.message, "type": self.type,
                    "param": self.param, "code": self.status}
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.status}}


def bad_request(message: str, param: str | None = None, value: object = None) -> ApiError:
    """A vLLM ``VLLMValidationError`` as the server renders it (suffix with parameter/value)."""
    extras = []
    if param is not None:
        extras.append(f"parameter={param}")
    if value is not None:
        extras.append(f"value={value}")
    text = f"{message} ({', '.join(extras)})" if extras else message
    return ApiError(400, "BadRequestError", text, param)


def legacy_bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequestError", message, None)


def check_requested_max_tokens(
    max_model_len: int, requested: int | None, param: str, fmt: ErrorFormat
) -> None:
    """Request-level check done before tokenizing (current format only)."""
    if fmt is ErrorFormat.CURRENT and requested is not None and requested > max_model_len:
        raise bad_request(
            f"{param}={requested} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens.",
            param, requested,
        )


def check_prompt_chars(max_model_len: int, max_chars_per_token: int, chars: int, fmt: ErrorFormat) -> None:
    """vLLM's pre-tokenization bound on prompt characters (current format only)."""
    bound = max_model_len * max_chars_per_token
    if fmt is ErrorFormat.CURRENT and chars > bound:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {chars} characters (more than {bound} characters, which is the "
            f"upper bound for {max_model_len} input tokens). Please reduce the length of the "
            "input prompt.",
            "input_text", chars,
        )


def output_budget(
    max_model_len: int,
    prompt_tokens: int,
    requested: int | None,
    fmt: ErrorFormat,
    *,
    token_ids_prompt: bool = False,
) -> int:
    """The max_tokens the engine runs with, or raise the error vLLM gives for this prompt."""
    if fmt is ErrorFormat.LEGACY:
        if requested is None:
            if prompt_tokens >= max_model_len:
                raise legacy_bad_request(
                    f"This model's maximum context length is {max_model_len} tokens. However, "
                    f"you requested {prompt_tokens} tokens in the messages, Please reduce the "
                    "length of the messages."
                )
            return max_model_len - prompt_tokens
        if prompt_tokens + requested > max_model_len:
            raise legacy_bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the "
                f"messages, {requested} in the completion). Please reduce the length of the "
                "messages or completion."
            )
        if requested < 1:
            raise legacy_bad_request(f"max_tokens must be at least 1, got {requested}.")
        return requested
    if prompt_tokens > max_model_len:
        # Text prompts are tokenized with truncation at L+1: that is all vLLM ever sees.
        reported = prompt_tokens if token_ids_prompt else max_model_len + 1
        qualifier = "at least " if reported == max_model_len + 1 else ""
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {qualifier}{reported} input tokens, which exceeds this limit even "
            "without any output tokens. Please reduce the length of the input prompt.",
            "input_tokens", reported,
        )
    budget = max_model_len - prompt_tokens
    if requested is not None:
        budget = min(budget, requested)
    if budget < 1:
        raise bad_request(f"max_tokens must be at least 1, got {budget}.", "max_tokens", budget)
    return budget


def model_not_found(model: object, served: str) -> ApiError:
    return ApiError(404, "NotFoundError",
                    f"The model `{model}` does not exist. Valid aliases: {served}.", "model")
