"""The learning sample's rule (core/learning.py)."""

from __future__ import annotations

import pytest

from litellm_dualpool.core.budget import TokenBudget
from litellm_dualpool.core.learning import (
    LearningSettings,
    LearnReason,
    learn_reason,
    near_limit,
)

SAMPLED = LearningSettings(sample_every=4)


def test_a_settled_key_learns_one_ordinary_request_in_n() -> None:
    reasons = [learn_reason(SAMPLED, settled=True, near=False, always=False, ordinal=i)
               for i in range(12)]
    assert [r is LearnReason.SAMPLED for r in reasons] == [i % 4 == 0 for i in range(12)]
    assert reasons.count(LearnReason.SKIPPED) == 9


@pytest.mark.parametrize(("settled", "near", "always", "want"), [
    (False, False, False, LearnReason.UNSETTLED),
    (True, True, False, LearnReason.NEAR_LIMIT),
    (True, False, True, LearnReason.ALWAYS),
    (True, True, True, LearnReason.ALWAYS),
])
def test_what_is_always_learned(settled: bool, near: bool, always: bool,
                                want: LearnReason) -> None:
    assert learn_reason(SAMPLED, settled=settled, near=near, always=always, ordinal=3) is want


def test_sample_every_one_learns_everything() -> None:
    assert learn_reason(LearningSettings(sample_every=1), settled=True, near=False,
                        always=False, ordinal=3) is LearnReason.UNSETTLED


def test_near_limit_is_a_limit_inside_the_widened_budget_range() -> None:
    budget = TokenBudget(prompt_tokens=7600, output_tokens=100, prompt_tokens_optimistic=7000)
    assert near_limit(budget, (8192, 131072), 0.15)        # 7700 * 1.15 > 8192
    assert not near_limit(budget, (8192, 131072), 0.0)     # [7100, 7700] holds no limit
    assert near_limit(budget, (7400, 131072), 0.0)         # the range straddles 7400
    far = TokenBudget(prompt_tokens=500, output_tokens=100, prompt_tokens_optimistic=450)
    assert not near_limit(far, (8192, 131072), 0.15)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="learning"):
        LearningSettings(sample_every=0)
