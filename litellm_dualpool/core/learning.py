"""Which finished requests the calibrator learns from: all of them until a key's fit has
settled, then a bounded sample of the ordinary ones, and always the ones that matter.

Why: once a key's fit rests on hundreds of observations and its out-of-sample spread is small,
the thousandth ordinary request moves it by nothing measurable, yet learning from it costs a
refit share, the influence guard, metric updates and (with shared state) a Redis write. What a
sample keeps: the fit's window is counted in observations (``ema_beta``), so a sampled key keeps
the same window over more requests; a drift is followed ``sample_every`` times later in requests,
but never in the requests that decide a routing: those near a pool's limit are always learned,
as are misroutes (a backend's rejection, a recovered request) and exact counts (a backend's
tokenizer asked before routing). The ordinary sample is deterministic: every ``sample_every``-th
ordinary request of a model group once its key has settled (the first one included), so the
cost is bounded whatever the traffic and a test can predict it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from litellm_dualpool.core.budget import TokenBudget


class LearnReason(StrEnum):
    """Why a finished request is learned from, or SKIPPED (a bounded metric label)."""

    UNSETTLED = "unsettled"  # the key's fit has not settled: every request teaches
    NEAR_LIMIT = "near_limit"  # its estimate lies near a pool's limit: always learned
    ALWAYS = "always"        # a misroute, a recovery or an exact count: always learned
    SAMPLED = "sampled"      # an ordinary request of a settled key, taken by the 1-in-N sample
    SKIPPED = "skipped"      # an ordinary request of a settled key, left out of the sample


@dataclass(frozen=True, slots=True)
class LearningSettings:
    """sample_every: 1 learns from every request (no sampling); N learns one ordinary request in
        N once a key has settled.
    settled_samples / settled_max_spread: a key has settled when its fit rests on at least this
        many observations and its learned spread (sigma) is at most this.
    near_limit_fraction: a request is near a limit when a pool's max_model_len lies within
        [optimistic, conservative] budget widened by this fraction on each side."""

    sample_every: int = 1
    settled_samples: int = 512
    settled_max_spread: float = 0.05
    near_limit_fraction: float = 0.15

    def __post_init__(self) -> None:
        if self.sample_every < 1 or self.settled_samples < 1 or not (
                self.settled_max_spread >= 0.0 and 0.0 <= self.near_limit_fraction <= 1.0):
            raise ValueError("invalid learning settings")


def near_limit(budget: TokenBudget, limits: Iterable[int], fraction: float) -> bool:
    """Whether a pool limit lies within the request's budget range (optimistic to conservative
    prompt plus the output budget), widened by `fraction` on each side."""
    optimistic = budget.prompt_tokens_optimistic or budget.prompt_tokens
    low = (budget.output_tokens + optimistic) * (1.0 - fraction)
    high = budget.total_tokens * (1.0 + fraction)
    return any(low <= limit <= high for limit in limits)


def learn_reason(settings: LearningSettings, *, settled: bool, near: bool, always: bool,
                 ordinal: int) -> LearnReason:
    """The rule: `ordinal` counts the ordinary requests of settled keys (from 0)."""
    if always:
        return LearnReason.ALWAYS
    if near:
        return LearnReason.NEAR_LIMIT
    if not settled or settings.sample_every <= 1:
        return LearnReason.UNSETTLED
    return LearnReason.SAMPLED if ordinal % settings.sample_every == 0 else LearnReason.SKIPPED
