"""Conversation affinity: a conversation that went to a larger pool keeps going there.

Why: a chat's next turn resends the whole conversation, so a conversation whose budget hovers
near a pool's limit would flip pools from turn to turn, and each flip loses the prefix cache the
other pool built (a long prefill again). So a continuation turn is held *up* in the largest pool
its conversation was placed in by fit, never down: the hold applies only when that pool is
allowed to the caller, fits the budget and is not saturated, and only when it is larger than the
pool the policy chose. A forced placement is never overridden.

A conversation is named by `conversation_key`: LiteLLM's session id when the caller sent one,
else its history (a turn's messages before the last assistant one are the previous turn's
request), always together with the tenant and the model group, so one tenant can never pin
another's conversation. `AffinityTable` keeps the pins: bounded (least
recently used first out) and expiring (a sliding TTL); time is passed in.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from litellm_dualpool.core.policy import Decision, PoolState, Reason

#: Characters of each message's head and of its tail that name a conversation without a
#: session id (with its length and role): enough to tell conversations apart, bounded whatever
#: the prompt's size.
SUMMARY_CHARS = 128
#: Longest session id taken as given (a longer one is hashed like any other).
_MAX_SESSION_ID_CHARS = 256
#: Placements that pin a conversation: chosen by fit (or held, or recovered after a rejection).
#: Spillover (load) and forced placements do not: they say nothing about the conversation's size.
PINNING_REASONS = frozenset({Reason.FITS, Reason.BORDERLINE, Reason.AFFINITY, Reason.RECOVERY})


class AffinityOutcome(StrEnum):
    """What conversation affinity did for one request (a bounded metric label)."""

    HELD = "held"                # moved up to its conversation's pool
    AGREED = "agreed"            # its pool already is the conversation's (or a larger) one
    EXPIRED = "expired"          # its conversation's pin was older than the TTL
    NOT_FITTING = "not_fitting"  # the pinned pool does not fit it or the caller may not use it
    SATURATED = "saturated"      # the pinned pool is at its spillover load: not held
    PINNED = "pinned"            # a conversation was pinned to a larger pool (new or moved up)
    EVICTED = "evicted"          # a pin made room for a newer one (max_conversations)


@dataclass(frozen=True, slots=True)
class AffinitySettings:
    """enabled: hold continuation turns in their conversation's pool.
    max_conversations: pins kept at most (least recently used first out).
    ttl_seconds: a pin unused for this long is forgotten."""

    enabled: bool = True
    max_conversations: int = 10_000
    ttl_seconds: float = 900.0


def _text_summary(text: str) -> tuple[int, str, str]:
    """A long text's length, head and tail: what tells two messages apart, bounded."""
    if len(text) <= 2 * SUMMARY_CHARS:
        return len(text), text, ""
    return len(text), text[:SUMMARY_CHARS], text[-SUMMARY_CHARS:]


def _message_summary(message: object) -> tuple[Any, ...]:
    """One message as the conversation key sees it: role, text summary, tool calls (bounded)."""
    if type(message) is not dict:  # what JSON gives; anything else is summarised by its type
        return (type(message).__name__,)
    content = message.get("content")
    if type(content) is str and len(message) == 2:  # the common {"role", "content"}
        return (message.get("role"), len(content), content[:SUMMARY_CHARS],
                content[-SUMMARY_CHARS:])
    if type(content) is list:
        content = "\x1f".join(p["text"] for p in content
                              if type(p) is dict and isinstance(p.get("text"), str))
    text = _text_summary(content) if isinstance(content, str) else None
    calls = message.get("tool_calls")
    return (message.get("role"), text,
            None if calls is None else _text_summary(repr(calls)[:4 * SUMMARY_CHARS]))


def is_continuation(messages: object) -> bool:
    """Whether a chat request continues a conversation: it carries an earlier assistant turn.
    Only such turns are held (a single-turn request that repeats another's prompt is not the
    same conversation)."""
    if type(messages) is not list or len(messages) < 2:
        return False
    return any(type(m) is dict and m.get("role") == "assistant" for m in messages)


def conversation_key(tenant: str, model_group: str, session_id: str | None,
                     messages: object, *, previous: bool = False) -> int | None:
    """The conversation a request belongs to, or None (nothing names one). Tenant and model
    group are part of the key.

    With a session id, the id. Else the messages themselves: a client resends a conversation's
    history verbatim, so the request of turn N, up to its last assistant message (the answer
    to turn N-1, which may be followed by tool results and the next user message), is the
    whole request of turn N-1. So a request pins under the key of all its messages, and a
    continuation looks up the key of its messages before the last assistant one
    (`previous=True`): two conversations share a key only if their histories are the same
    (a fixed system prompt and first instruction do not make two agents one conversation).
    Each message counts by its role, length and first and last `SUMMARY_CHARS` characters.

    The key is Python's own hash: SipHash with a per-process random key, so nobody outside
    the worker can aim a collision at another tenant's pin, and ~20x cheaper than a
    cryptographic digest (blake2b of 8 KB took ~25 us). Pins live in one worker's memory,
    where the key is stable."""
    if session_id:
        return hash((tenant, model_group, "s", session_id[:_MAX_SESSION_ID_CHARS]))
    if type(messages) is not list or not messages:
        return None
    if previous:
        last = next((i for i in range(len(messages) - 1, -1, -1)
                     if type(messages[i]) is dict and messages[i].get("role") == "assistant"),
                    None)
        if not last:
            return None
        messages = messages[:last]
    return hash((tenant, model_group, "m", tuple(map(_message_summary, messages))))


def hold(decision: Decision, pinned: str | None, pools: Sequence[PoolState], *,
         spillover_load_fraction: float | None = None,
         allowed_pools: frozenset[str] | None = None) -> tuple[Decision, AffinityOutcome | None]:
    """The decision with conversation affinity applied, and what affinity did (None: no pin).

    Upward only: the pinned pool replaces the policy's when it is larger, allowed, fits the
    budget and is below the spillover load. A refused or forced decision is left alone."""
    if pinned is None or decision.pool is None or decision.reason is Reason.FORCED:
        return decision, None
    by_name = {p.name: p for p in pools}
    chosen, target = by_name.get(decision.pool), by_name.get(pinned)
    if target is None or chosen is None:
        return decision, AffinityOutcome.NOT_FITTING
    if target.max_model_len <= chosen.max_model_len:
        return decision, AffinityOutcome.AGREED
    if decision.budget_tokens > target.max_model_len or (
            allowed_pools is not None and pinned not in allowed_pools):
        return decision, AffinityOutcome.NOT_FITTING
    if (spillover_load_fraction is not None and target.load_fraction is not None
            and target.load_fraction >= spillover_load_fraction):
        return decision, AffinityOutcome.SATURATED
    return Decision(target.name, Reason.AFFINITY, decision.budget_tokens, target.max_model_len,
                    decision.category), AffinityOutcome.HELD


@dataclass(slots=True)
class _Pin:
    pool: str
    limit_tokens: int
    at: float


class AffinityTable:
    """Conversation -> the largest pool it was placed in by fit. Bounded and expiring; thread
    safe (one short lock per call)."""

    def __init__(self, settings: AffinitySettings) -> None:
        if settings.max_conversations < 1 or not settings.ttl_seconds > 0:
            raise ValueError("max_conversations must be >= 1 and ttl_seconds > 0")
        self.settings = settings
        self._pins: OrderedDict[int, _Pin] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pins)

    def lookup(self, key: int, now: float) -> tuple[str | None, AffinityOutcome | None]:
        """(pinned pool, None), or (None, EXPIRED) for a pin past its TTL (then forgotten), or
        (None, None) when the conversation has no pin. A hit refreshes the pin."""
        with self._lock:
            pin = self._pins.get(key)
            if pin is None:
                return None, None
            if now - pin.at > self.settings.ttl_seconds:
                del self._pins[key]
                return None, AffinityOutcome.EXPIRED
            pin.at = now
            self._pins.move_to_end(key)
            return pin.pool, None

    def pin(self, key: int, pool: str, limit_tokens: int, now: float) -> list[AffinityOutcome]:
        """Remember that the conversation went to `pool` (kept only if larger than its pin);
        what happened: PINNED when the pin is new or moved up, EVICTED per pin dropped."""
        outcomes: list[AffinityOutcome] = []
        with self._lock:
            pin = self._pins.get(key)
            if pin is not None and now - pin.at <= self.settings.ttl_seconds:
                pin.at = now
                self._pins.move_to_end(key)
                if limit_tokens <= pin.limit_tokens:
                    return outcomes
                pin.pool, pin.limit_tokens = pool, limit_tokens
                return [AffinityOutcome.PINNED]
            self._pins[key] = _Pin(pool, limit_tokens, now)
            self._pins.move_to_end(key)
            outcomes.append(AffinityOutcome.PINNED)
            while len(self._pins) > self.settings.max_conversations:
                self._pins.popitem(last=False)
                outcomes.append(AffinityOutcome.EVICTED)
        return outcomes

    def forget(self, key: int) -> None:
        with self._lock:
            self._pins.pop(key, None)


def session_id_of(metadata: Mapping[str, Any] | None, generated_flag: str) -> str | None:
    """A caller's session id from request metadata (``session_id``), unless the proxy made it up
    for this one request (`generated_flag` set: it names no conversation)."""
    if not metadata:
        return None
    value = metadata.get("session_id")
    if value is None or metadata.get(generated_flag):
        return None
    text = str(value) if isinstance(value, str | int) else None
    return text or None
