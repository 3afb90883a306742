"""The refusal check keeps a floor however wide the learned spread (finding 10 of the security review).

With gamma 2 a spread of 0.5 made the optimistic prompt estimate `point * (1 - gamma * sigma)`
zero: the floor fell to the output budget and a 9 MB tools request went to the largest pool's
backend instead of a 400. The optimistic estimate now never drops below the prompt's bytes at
`max_bytes_per_token`.
"""

from __future__ import annotations

import functools
import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_dualpool.core.budget import TokenBudget
from litellm_dualpool.core.calibration import CalibrationSettings, Calibrator, CategoryKey
from litellm_dualpool.core.content import CharCounts
from litellm_dualpool.core.estimator import Estimator
from litellm_dualpool.core.policy import PolicySettings, PoolState, Reason, decide
from litellm_dualpool.core.shape import ContentClass, RequestShape

KEY = CategoryKey("llama", "wide")
POOLS = [PoolState("short", 8192), PoolState("long", 65536)]
NINE_MB = 9 * 1024 * 1024
#: Character classes per byte of the shapes below (spaces, newlines, digits, punctuation,
#: capitals; no multi-byte text, indentation or kana).
MIX = (0.16, 0.01, 0.02, 0.03, 0.02)


def prose_shape(n_bytes: int, mix: tuple[float, ...] = MIX) -> RequestShape:
    """A one-message shape of `n_bytes` with a fixed character mix (counts grow with bytes)."""
    counts = CharCounts(*(math.floor(d * n_bytes) for d in mix), 0, 0, 0)
    return RequestShape(n_bytes, 0, 1, 0, 0, 0, None, ContentClass.PROSE, char_counts=counts)


@functools.cache
def _learned_snapshot() -> str:
    """A key learned from 200 honest observations (4.5 bytes/token, 3% noise), as JSON."""
    rng, cal = random.Random(7), Calibrator()
    for _ in range(200):
        n = rng.randint(500, 40_000)
        cal.observe(KEY, prose_shape(n), round(n / 4.5 * (1 + rng.uniform(-0.03, 0.03))) + 9)
    return json.dumps(cal.snapshot())


def with_spread(sigma: float, gamma: float = 2.0, *, learned: bool = True) -> Calibrator:
    """A calibrator whose spread for KEY is `sigma`: a learned key whose deviation statistics
    are set to it, or a cold one that assumes it."""
    if not learned:
        return Calibrator(CalibrationSettings(gamma=gamma, cold_start_sigma=sigma))
    snapshot = json.loads(_learned_snapshot())
    for entry in snapshot["keys"]:
        entry["dev_sum"] = sigma * entry["dev_weight"]
    cal = Calibrator(CalibrationSettings(gamma=gamma))
    cal.restore(snapshot)
    # a restored spread is capped at max/min bytes per token (a snapshot is untrusted input)
    cap = cal.settings.max_bytes_per_token / cal.settings.min_bytes_per_token
    assert cal.spread(KEY) == pytest.approx(min(max(sigma, cal.settings.min_sigma), cap))
    return cal


def tools_request(description_bytes: int) -> dict[str, Any]:
    """A chat request whose one tool definition carries a huge description."""
    return {"messages": [{"role": "user", "content": "Which tool fits?"}], "max_tokens": 16,
            "tools": [{"type": "function", "function": {
                "name": "lookup", "description": "a" * description_bytes,
                "parameters": {"type": "object", "properties": {}}}}]}


@pytest.mark.parametrize("learned", [True, False])
@pytest.mark.parametrize("sigma", [0.12, 0.5, 0.6, 1.0, 5.0])
def test_a_9mb_tools_request_is_refused_whatever_the_spread(sigma: float, learned: bool) -> None:
    estimate = Estimator(with_spread(sigma, learned=learned)).estimate(
        tools_request(NINE_MB), "llama", category=KEY.category)
    budget = estimate.budget
    assert budget.prompt_tokens_optimistic is not None
    assert budget.prompt_tokens_optimistic >= NINE_MB / 8  # the bytes bound
    if sigma >= 0.5:  # the case that switched the check off: point less the margin is <= 1
        assert 2 * (budget.prompt_tokens_point or 0) - budget.prompt_tokens <= 1
    decision = decide(budget.total_tokens, POOLS, PolicySettings(),
                      floor_tokens=budget.refusal_floor_tokens)
    assert (decision.pool, decision.reason) == (None, Reason.FITS_NOWHERE)


def test_the_bytes_bound_follows_the_configured_ratio_limit() -> None:
    shape = prose_shape(800_000)
    for max_ratio, expected in ((8.0, 100_000), (16.0, 50_000)):
        cal = Calibrator(CalibrationSettings(gamma=2.0, cold_start_sigma=3.0,
                                             max_bytes_per_token=max_ratio))
        optimistic, point, conservative = cal.estimate_range(KEY, shape)
        assert optimistic == expected  # the margin (gamma * sigma = 6) scaled the estimate to 0
        assert optimistic < point < conservative


def test_a_narrow_spread_keeps_the_optimistic_estimate_below_the_point() -> None:
    # the floor only matters once the margin is wide: at the usual spreads the optimistic
    # estimate is the point less the margin, as before
    cal = with_spread(0.05)
    optimistic, point, conservative = cal.estimate_range(KEY, prose_shape(45_000))
    assert optimistic < point < conservative
    assert point - optimistic == pytest.approx(conservative - point, abs=2)
    assert optimistic > 45_000 / 8


def test_token_id_prompts_are_exact_in_all_three_estimates() -> None:
    shape = RequestShape(0, 0, 0, 0, 0, 0, 3000, ContentClass.PROSE, chat_template=False)
    assert with_spread(5.0).estimate_range(KEY, shape) == (3000, 3000, 3000)


spreads = st.floats(0.0, 10.0)
gammas = st.floats(0.0, 20.0)
sizes = st.integers(0, 20_000_000)
mixes = st.tuples(*(st.floats(0.0, 0.3) for _ in MIX))


@settings(max_examples=200, deadline=None)
@given(spreads, gammas, st.booleans(), sizes, sizes, mixes)
def test_the_refusal_floor_is_positive_and_monotone_in_bytes_for_any_spread(
        sigma: float, gamma: float, learned: bool, a: int, b: int,
        mix: tuple[float, ...]) -> None:
    cal = with_spread(sigma, gamma, learned=learned)
    small, large = sorted((a, b))

    def floor(n: int) -> int:
        optimistic, point, conservative = cal.estimate_range(KEY, prose_shape(n, mix))
        budget = TokenBudget(prompt_tokens=conservative, output_tokens=0,
                             prompt_tokens_point=point, prompt_tokens_optimistic=optimistic)
        assert optimistic <= conservative
        return budget.refusal_floor_tokens

    assert floor(small) >= math.ceil(small / cal.settings.max_bytes_per_token) + 1 >= 1
    assert floor(small) <= floor(large)


@given(st.integers(0, 10**8), st.integers(0, 10**8), st.integers(0, 10**8))
def test_the_floor_is_at_least_one_token_and_the_output_budget(
        optimistic: int, extra: int, output: int) -> None:
    budget = TokenBudget(prompt_tokens=optimistic + extra, output_tokens=output,
                         prompt_tokens_point=optimistic + extra // 2,
                         prompt_tokens_optimistic=optimistic)
    assert budget.refusal_floor_tokens >= max(optimistic + 1, output, 1)
    assert budget.refusal_floor_tokens <= budget.total_tokens + 1
