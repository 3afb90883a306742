"""One learnable observation and its wire form: what a worker shares about a finished request.

An observation is everything the calibrator needs to learn (the calibration key, the request's
shape without its text: sizes, counts and character-class counts; the backend's prompt tokens) plus who sent it (the tenant hash and
its trust) and where it was made (worker id and sequence number, unique together). The wire form
is one compact JSON array, versioned, so that a stream entry is ~150 bytes and a worker of another
version skips what it cannot read instead of learning garbage.
"""

from __future__ import annotations

import json
import math
from dataclasses import astuple, dataclass, fields

from litellm_dualpool.core.calibration import MAX_PROMPT_TOKENS, CategoryKey
from litellm_dualpool.core.calibration_snapshot import MAX_COUNT
from litellm_dualpool.core.content import CharCounts
from litellm_dualpool.core.shape import ContentClass, RequestShape
from litellm_dualpool.core.tenant import ObservationTrust

WIRE_VERSION = 1
#: Longest string field accepted from the wire (model groups, categories, ids).
_MAX_TEXT = 256
#: Longest wire form accepted (an observation takes ~150 bytes, at most ~1.5 KB with the
#: longest strings): a bigger entry is garbage, never parsed.
MAX_WIRE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Observation:
    """A backend-reported prompt token count for a request of a given shape and tenant."""

    key: CategoryKey
    shape: RequestShape
    prompt_tokens: int
    tenant: str
    trust: ObservationTrust
    origin: str
    seq: int
    time_ms: int

    @property
    def learnable(self) -> bool:
        """Text-only shapes with a count in [1, MAX_PROMPT_TOKENS]; media and token-id prompts
        never are (nor absurd counts: they are never shared with the other workers)."""
        s = self.shape
        return (type(self.prompt_tokens) is int and 0 < self.prompt_tokens <= MAX_PROMPT_TOKENS
                and s.media_count == 0 and s.exact_prompt_tokens is None and s.total_bytes > 0)


def encode(obs: Observation) -> str:
    """The wire form (a JSON array)."""
    s = obs.shape
    return json.dumps([
        WIRE_VERSION, obs.key.model_group, obs.key.category, s.text_bytes, s.structured_bytes,
        s.message_count, s.tool_count, s.content_class.value, int(s.chat_template),
        int(s.has_tools), obs.prompt_tokens, obs.tenant, obs.trust.value, obs.origin, obs.seq,
        obs.time_ms, None if s.char_counts is None else list(astuple(s.char_counts))],
        separators=(",", ":"))


def _int(value: object, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
    if type(value) is not int or not minimum <= value <= maximum:
        text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValueError(f"expected an integer in [{minimum}, {maximum}], got {text}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ValueError(f"expected a string of at most {_MAX_TEXT} characters")
    return value


def decode(data: str | bytes) -> Observation:
    """Parse the wire form; ValueError for anything malformed, out of bounds or of another
    version (a stream entry may hold anything: whatever it holds ends here)."""
    if not isinstance(data, str | bytes) or len(data) > MAX_WIRE_BYTES:
        raise ValueError(f"not an observation: more than {MAX_WIRE_BYTES} bytes or not text")
    try:
        items = json.loads(data)
    except (ValueError, RecursionError) as error:  # JSON, UTF-8, digit limits; deep nesting
        raise ValueError(f"not JSON: {type(error).__name__}") from None
    try:
        return _parse(items)
    except (TypeError, KeyError, OverflowError) as error:
        raise ValueError(f"malformed observation: {type(error).__name__}") from None


def _parse(items: object) -> Observation:
    if not isinstance(items, list) or len(items) not in (16, 17) or items[0] != WIRE_VERSION:
        raise ValueError("not an observation of wire version 1")
    (_, group, category, text_bytes, structured_bytes, messages, tools, content, template,
     has_tools, prompt_tokens, tenant, trust, origin, seq, time_ms) = items[:16]
    counts = items[16] if len(items) == 17 else None
    if counts is not None:
        if not isinstance(counts, list) or len(counts) != len(fields(CharCounts)):
            raise ValueError(f"char counts must be a list of {len(fields(CharCounts))} integers")
        counts = CharCounts(*(_int(c) for c in counts))
    if isinstance(time_ms, float) and math.isfinite(time_ms):
        time_ms = int(time_ms)
    shape = RequestShape(
        text_bytes=_int(text_bytes), structured_bytes=_int(structured_bytes),
        message_count=_int(messages), tool_count=_int(tools), image_count=0, audio_count=0,
        exact_prompt_tokens=None, content_class=ContentClass(content),
        chat_template=bool(_int(template)), has_tools=bool(_int(has_tools)), char_counts=counts)
    return Observation(
        key=CategoryKey(_text(group), _text(category)), shape=shape,
        prompt_tokens=_int(prompt_tokens, 1, MAX_PROMPT_TOKENS), tenant=_text(tenant),
        trust=ObservationTrust(trust), origin=_text(origin), seq=_int(seq), time_ms=_int(time_ms))
