"""The plan as LiteLLM carries it: one entry of the request's metadata, from the pre-call hook
through every routing attempt (fallback hops included) to the success and failure events.

The entry is a `PlanRecord`: a dict of the plan's plain values (other loggers read and serialise
metadata) that also carries the typed `Plan` and its `Progress`. Only the plugin makes one: a
client's JSON cannot, so a plan sent in a request's metadata is never taken for the plugin's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litellm_dualpool.core.plan import Plan, Progress
from litellm_dualpool.core.shape import ShapeDraft
from litellm_dualpool.errors import NoPoolFitsError

#: The metadata key of the plan (a client-sent value there is dropped by the pre-call hook).
STASH_KEY = "_dualpool"


class PlanRecord(dict[str, Any]):
    """`plan.to_metadata()` as a dict, with the plan and its progress attached.

    `refusal`: the recovery hop's "no larger pool" refusal, kept for the post-call failure hook,
    which tells the client in OpenAI's context-length shape (LiteLLM's own error for the failed
    fallback hop wraps it in other text).
    `conversation`: the conversation's affinity key (core/affinity.py), when one was computed;
    else `messages` / `session_id` (references, no copies) let a recovery to a larger pool
    compute it and pin the conversation there.
    `expose_budget`: the caller's policy shows it ``x-dualpool-budget-tokens`` (resolved once,
    with the plan, not again for the response).
    `draft`: the walked body of a FAR plan (its shape has no character counts; learning
    completes it, `core.estimator.learning_shape`)."""

    __slots__ = ("conversation", "draft", "expose_budget", "messages", "plan", "progress",
                 "refusal", "session_id")

    def __init__(self, plan: Plan, progress: Progress, *, expose_budget: bool = False,
                 draft: ShapeDraft | None = None) -> None:
        super().__init__(plan.to_metadata())
        self.plan = plan
        self.progress = progress
        self.expose_budget = expose_budget
        self.draft = draft
        self.refusal: NoPoolFitsError | None = None
        self.conversation: int | None = None
        self.messages: Any = None
        self.session_id: str | None = None


def record_in(metadata: Mapping[str, Any] | None) -> PlanRecord | None:
    """The plugin's record in a metadata dict, or None (absent, or anything a client sent)."""
    value = (metadata or {}).get(STASH_KEY)
    return value if isinstance(value, PlanRecord) else None
