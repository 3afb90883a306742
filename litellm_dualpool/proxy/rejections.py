"""Recognise a backend's own context-length rejection and read the token counts it states.

A rejection is believed only when the recognised sentence *is* the backend error's message, in
an envelope the engine itself writes: vLLM's ``{"error": {"message", ...}}`` (current) and flat
``{"object": "error", "message", ...}`` (legacy; SGLang uses it too), OpenAI's
``code: "context_length_exceeded"``, TGI's ``{"error": "...", "error_type": ...}``. The sentence
must open the message (anchored). Why: a validation error quotes the client's own input (vLLM's
pydantic 400 for ``temperature: "<any text>"`` repeats the text), so "the sentence appears
somewhere in the error" lets a client fake a rejection, count a misroute, call the larger pool
and teach a count of its choosing. LiteLLM's own mapping to ``ContextWindowExceededError`` is
such a substring test: the class alone proves nothing.

Where the text comes from: LiteLLM's exception message (``litellm.XError: ... <Provider>Exception
- <body or message>``), its retry breadcrumbs (the same text), the OpenAI SDK's ``Error code: 400
- {...}``, a raw response body, or a bare message. Only the prefixes LiteLLM and the SDK put in
front are stripped; what follows is the backend's payload, never searched further.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

#: Payloads longer than this are not parsed (a genuine rejection is a few hundred bytes; this
#: bounds the work on every LiteLLM error, the mapping hook in install.py included).
MAX_PAYLOAD_CHARS = 65536
#: What LiteLLM (``litellm.BadRequestError: ``, ``Hosted_vllmException - ``; provider names may
#: hold hyphens) and the OpenAI SDK (``Error code: 400 - ``) put in front of a backend's payload,
#: repeated, from the start only.
_PREFIXES = re.compile(
    r"(?:\s*(?:(?:litellm\.)?[A-Za-z_][\w-]*(?:Error|Exception)(?::| -)|Error code: \d{3} -)\s)*")
#: OpenAI's (and compatible servers') error code for an over-length request.
OPENAI_CODE = "context_length_exceeded"


@dataclass(frozen=True, slots=True)
class ContextRejection:
    """What a context-length rejection told us; any count may be missing from its wording.

    engine: whose wording matched (``vllm``, ``openai``, ``sglang``, ``tgi``), for logs and tests.
    """

    limit_tokens: int | None
    prompt_tokens: int | None
    requested_tokens: int | None
    #: False when prompt_tokens is a lower bound ("at least N"): fine for logs, not for learning.
    prompt_tokens_exact: bool = True
    engine: str = ""


@dataclass(frozen=True, slots=True)
class _Wording:
    """One engine's over-length sentence, anchored at the start of the backend's message.

    The named groups are ``limit``, ``prompt`` (exact), ``at_least`` (a lower bound of the prompt)
    and ``requested``; `details` are searched only in the rest of that same message."""

    engine: str
    opening: re.Pattern[str]
    details: tuple[re.Pattern[str], ...] = ()


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_WORDINGS = (
    # vLLM (every release; OpenAI's own wording opens the same way). What follows "However," is
    # the prompt's count in one of vLLM's phrasings, newest first: current vLLM tokenizes at
    # max_model_len + 1, so its "at least N" is only a lower bound.
    _Wording("vllm", _re(r"This model's maximum context length is (?P<limit>\d+) tokens"), (
        _re(r"you requested (?P<requested>\d+) tokens \((?P<prompt>\d+) in the messages"),
        _re(r"you requested (?P<prompt>\d+) tokens in the (?:messages|input)"),
        _re(r"your request has (?P<prompt>\d+) input tokens"),
        _re(r"your messages resulted in (?P<prompt>\d+) tokens"),  # OpenAI
        _re(r"prompt contains at least (?P<at_least>\d+) input tokens"
            r"(?:, for a total of at least (?P<requested>\d+) tokens)?"),
        _re(r"prompt contains (?P<prompt>\d+) input tokens"),  # a token-id prompt: exact
    )),
    # vLLM 0.6-0.8: max_tokens alone over the window, with the prompt's exact count.
    _Wording("vllm", _re(
        r"'max_tokens' or 'max_completion_tokens' is too large: (?P<requested>\d+)\. This "
        r"model's maximum context length is (?P<limit>\d+) tokens and your request has "
        r"(?P<prompt>\d+) input tokens")),
    # SGLang, current (prompt + max_new_tokens over the window) and older / input-only wordings.
    _Wording("sglang", _re(
        r"Requested token count exceeds the model's maximum context length of (?P<limit>\d+) "
        r"tokens\. You requested a total of (?P<requested>\d+) tokens: (?P<prompt>\d+) tokens "
        r"from the input messages")),
    _Wording("sglang", _re(
        r"The input \((?P<prompt>\d+) tokens\) is longer than the model's context length "
        r"\((?P<limit>\d+) tokens\)")),
    _Wording("sglang", _re(
        r"Input length \((?P<prompt>\d+) tokens\) exceeds the maximum allowed length "
        r"\((?P<limit>\d+) tokens\)")),
    # TGI (text-generation-inference).
    _Wording("tgi", _re(
        r"Input validation error: `inputs` tokens \+ `max_new_tokens` must be <= (?P<limit>\d+)\. "
        r"Given: (?P<prompt>\d+) `inputs` tokens and \d+ `max_new_tokens`")),
    _Wording("tgi", _re(
        r"Input validation error: `inputs` must have less than (?P<limit>\d+) tokens\. "
        r"Given: (?P<prompt>\d+)")),
)


def _int(match: re.Match[str] | None, name: str) -> int | None:
    if match is None or name not in match.re.groupindex:
        return None
    value = match.group(name)
    return int(value) if value is not None else None


def _read_wording(message: str) -> ContextRejection | None:
    """The counts of an over-length `message`, None unless it opens with a known wording."""
    text = message.lstrip()
    for wording in _WORDINGS:
        opening = wording.opening.match(text)
        if opening is None:
            continue
        rest = text[opening.end():]
        detail = next((m for m in (p.search(rest) for p in wording.details) if m), None)
        exact = _int(opening, "prompt") or _int(detail, "prompt")
        at_least = _int(detail, "at_least")
        return ContextRejection(
            limit_tokens=_int(opening, "limit"),
            prompt_tokens=exact if exact is not None else at_least,
            requested_tokens=_int(opening, "requested") or _int(detail, "requested"),
            prompt_tokens_exact=exact is not None or at_least is None,
            engine=wording.engine)
    return None


def _envelope_message(body: object) -> tuple[str, object] | None:
    """(message, code) of an error body in one of the engines' envelopes, else None."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):  # vLLM current, OpenAI, SGLang's newer router
        message, code = error.get("message"), error.get("code")
    elif isinstance(error, str):  # TGI
        message, code = error, body.get("error_type")
    elif body.get("object") == "error":  # vLLM legacy, SGLang
        message, code = body.get("message"), body.get("code")
    else:
        return None
    return (message, code) if isinstance(message, str) else None


def _decode(payload: str) -> object:
    """The JSON (or, from the OpenAI SDK, Python-literal) object `payload` opens with."""
    try:
        value, _ = json.JSONDecoder().raw_decode(payload)
        return value
    except ValueError:
        pass
    try:
        return ast.literal_eval(payload.rstrip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def parse_rejection_text(text: str) -> ContextRejection | None:
    """The rejection stated by an error text (see the module docstring for the forms), or None.

    After LiteLLM's and the SDK's prefixes, either an error body follows (its envelope's own
    message must open with a known wording, or carry OpenAI's code) or a bare message does
    (which must itself open with one)."""
    if len(text) > MAX_PAYLOAD_CHARS:
        return None
    prefix = _PREFIXES.match(text)
    payload = text[prefix.end() if prefix else 0:].lstrip()
    if not payload.startswith("{"):
        return _read_wording(payload)
    found = _envelope_message(_decode(payload))
    if found is None:
        return None
    message, code = found
    rejection = _read_wording(message)
    if rejection is None and code == OPENAI_CODE:
        return ContextRejection(None, None, None, engine="openai")
    return rejection


def _classes(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def parse_context_rejection(error: BaseException | str | None) -> ContextRejection | None:
    """The rejection's numbers, or None when `error` is not a backend's own context-length
    rejection. An exception must be a 400 (LiteLLM's/OpenAI's ``BadRequestError`` family); its
    class (``ContextWindowExceededError`` or not) is not evidence, its text is."""
    if error is None:
        return None
    if isinstance(error, str):
        return parse_rejection_text(error)
    if "BadRequestError" not in _classes(error):
        return None
    message = getattr(error, "message", None)
    return parse_rejection_text(message if isinstance(message, str) and message else str(error))
