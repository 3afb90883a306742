"""What a client is told when a request is too long for every pool it may use: OpenAI's
context-length error, so that client code written against OpenAI (``code ==
"context_length_exceeded"``, or a match on "maximum context length") trims and retries.

OpenAI's shape is ``{"error": {"message", "type": "invalid_request_error", "param",
"code": "context_length_exceeded"}}`` with status 400. LiteLLM's proxy renders a
``ProxyException`` as ``{"error": exc.to_dict()}`` and takes the HTTP status from ``exc.code``,
which ``to_dict`` also writes into the body (``"code": "400"``); an ``HTTPException`` becomes a
ProxyException the same way, and a post-call failure hook may only return an HTTPException.
Same on 1.106 and 1.110. So the body's code needs a subclass whose ``to_dict`` writes OpenAI's
code while ``code`` keeps the status. LiteLLM merges the response headers (its own and the
header hook's) into a raised ProxyException's ``headers``.

The messages are built from the plugin's numbers only, never from a backend's or LiteLLM's text,
so no hidden recovery group's name can reach them. They are written for the client: the
refusals LiteLLM routes on (the filter's) keep their own wording, which must not read as a
backend's context-length rejection (LiteLLM would map it and fall back).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from litellm.proxy._types import ProxyException

from litellm_dualpool.errors import NoPoolFitsError, PoolNotAllowedError

#: OpenAI's error code for a request longer than the model's context window.
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
#: OpenAI's error type for a request the client must change.
INVALID_REQUEST = "invalid_request_error"


class ContextLengthExceededError(ProxyException, HTTPException):  # type: ignore[misc]
    """A 400 whose JSON body carries ``"code": "context_length_exceeded"`` (``code`` stays the
    HTTP status, which LiteLLM's exception handler reads).

    Both a ProxyException and an HTTPException: the proxy keeps a post-call failure hook's
    return value only when it is an HTTPException, and renders an exception with the handler
    of the first of its classes it knows, which must be ProxyException's (an HTTPException is
    rendered as ``{"detail": ...}``). ProxyException's ``__init__`` would call HTTPException's
    through that order, so the fields of both are set here (the same on 1.106 and 1.110)."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None,
                 param: str | None = None) -> None:
        Exception.__init__(self, message)
        # ProxyException's fields
        self.message = message
        self.type = INVALID_REQUEST
        self.param = param
        self.code = "400"
        self.openai_code = CONTEXT_LENGTH_EXCEEDED
        self.headers = dict(headers or {})
        self.provider_specific_fields = None
        # HTTPException's fields
        self.status_code = 400
        self.detail = message

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = super().to_dict()
        body["code"] = CONTEXT_LENGTH_EXCEEDED
        return body


def _lead(limit_tokens: int, error: NoPoolFitsError) -> str:
    """OpenAI's (and vLLM's) opening sentence, which clients and LiteLLM match on; for a policy
    refusal the window is the largest one this caller's key may use."""
    if isinstance(error, PoolNotAllowedError):
        return (f"The maximum context length this API key may use on model group "
                f"{error.model_group!r} is {limit_tokens} tokens.")
    return f"This model's maximum context length is {limit_tokens} tokens."


def refusal_error(error: NoPoolFitsError, *,
                  headers: dict[str, str] | None = None) -> ContextLengthExceededError:
    """The client's 400 for a request the plugin refuses before any backend call: no pool fits
    (or none the caller's policy allows). The plugin's own explanation follows OpenAI's
    sentence unchanged (a policy refusal keeps its "does not allow")."""
    return ContextLengthExceededError(f"{_lead(error.largest_limit_tokens, error)} {error}",
                                      headers=headers)


def no_larger_pool_error(*, model_group: str, pool: str, limit_tokens: int,
                         budget_tokens: int, larger_pool: str | None = None,
                         headers: dict[str, str] | None = None) -> ContextLengthExceededError:
    """The client's 400 when misroute recovery ends for the request's length: `pool` rejected
    it and no larger pool exists (`larger_pool` None), or the larger pool rejected it too.
    `limit_tokens` is the window of the last pool that rejected it."""
    if larger_pool is None:
        what = (f"pool {pool!r} of model group {model_group!r} rejected the request for its "
                "context length and no larger pool exists (that this caller may use)")
    else:
        what = (f"pool {pool!r} of model group {model_group!r} rejected the request for its "
                f"context length and so did the larger pool {larger_pool!r}")
    return ContextLengthExceededError(
        f"This model's maximum context length is {limit_tokens} tokens. litellm-dualpool: {what}; "
        f"the request needs an estimated {budget_tokens} tokens (prompt + max output). Shorten "
        "the prompt or lower max_tokens.", headers=headers)
