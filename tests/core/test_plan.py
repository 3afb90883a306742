"""The plan: one entry decides for the proxy and the simulator; its metadata form round-trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_dualpool.core.calibration import Calibrator
from litellm_dualpool.core.estimator import Estimate, Estimator
from litellm_dualpool.core.plan import Plan, Progress, plan_recovery, plan_request
from litellm_dualpool.core.policy import PolicySettings, PoolState, Reason, failover_pool
from litellm_dualpool.core.shape import shape_request
from litellm_dualpool.core.tenant import ObservationTrust
from litellm_dualpool.errors import NoPoolFitsError, PoolNotAllowedError

POOLS = [PoolState("short", 4096), PoolState("long", 16384)]


def estimate(content: str, max_tokens: int = 64) -> Estimate:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    return Estimator(Calibrator()).estimate(body, "llama")


def test_a_plan_round_trips_through_json_character_counts_included() -> None:
    plan = plan_request(estimate("def f(x):\n    return x + 1  # 42 ÄÖ"), POOLS, PolicySettings(),
                        plan_id="p-1", allowed_pools=frozenset({"short"}), tenant="t123",
                        trust=ObservationTrust.NORMAL)
    assert plan.shape.char_counts is not None
    assert Plan.from_metadata(json.loads(json.dumps(plan.to_metadata()))) == plan


@pytest.mark.parametrize(("field", "bad"), [
    ("budget", [1, 2]), ("budget", [-1, 0, 1, None, None]), ("shape", [1, 2, 3]),
    ("decision", ["short", "teleport", 1, 2]), ("trust", "full"), ("id", 7),
    ("allowed", "short"), ("shape", [1.5, 0, 1, 0, 0, 0, None, "prose", 0, True, False, None]),
])
def test_metadata_that_is_not_a_plan_is_an_error(field: str, bad: object) -> None:
    data = plan_request(estimate("hello"), POOLS, PolicySettings()).to_metadata()
    data[field] = bad
    with pytest.raises(ValueError):
        Plan.from_metadata(data)


def test_a_refused_plan_names_its_error() -> None:
    refused = plan_request(estimate("hi", max_tokens=20_000), POOLS, PolicySettings())
    assert refused.decision.pool is None and isinstance(refused.refusal(), NoPoolFitsError)
    barred = plan_request(estimate("hi", max_tokens=8_000), POOLS, PolicySettings(),
                          allowed_pools=frozenset({"short"}))
    assert isinstance(barred.refusal(), PoolNotAllowedError)
    with pytest.raises(ValueError):
        Progress.start(refused)
    served = plan_request(estimate("hi"), POOLS, PolicySettings())
    assert served.refusal() is None and Progress.start(served).pool == "short"


def test_a_spillover_plan_remembers_where_it_would_have_gone() -> None:
    loaded = [PoolState("short", 4096, 0.95), PoolState("long", 16384, 0.1)]
    plan = plan_request(estimate("hi"), loaded, PolicySettings())
    assert (plan.decision.pool, plan.decision.reason, plan.preferred) == (
        "long", Reason.SPILLOVER, "short")


def test_a_retry_of_the_recovery_hop_stays_in_the_recovery_pool() -> None:
    pools = [PoolState("s", 2048), PoolState("m", 8192), PoolState("l", 32768)]
    plan = plan_request(estimate("hi"), pools, PolicySettings())
    progress = Progress.start(plan)
    first = plan_recovery(plan, progress, pools)
    assert first.pool == "m"
    progress.pool, progress.recovered_from = "m", "s"
    assert plan_recovery(plan, progress, pools).pool == "m"  # not "l": m failed otherwise


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40_000), st.sampled_from(["short", "long"]),
       st.sets(st.sampled_from(["short", "long"])), st.booleans())
def test_failover_never_sends_a_budget_to_a_pool_it_does_not_fit(
        budget: int, current: str, available: set[str], only_short: bool) -> None:
    allowed = frozenset({"short"}) if only_short else None
    chosen = failover_pool(budget, current, POOLS, available, allowed_pools=allowed)
    if chosen is not None:
        limit = {p.name: p.max_model_len for p in POOLS}[chosen]
        assert chosen != current and chosen in available and budget <= limit
        assert allowed is None or chosen in allowed
    else:
        assert not any(p.name != current and p.name in available and budget <= p.max_model_len
                       and (allowed is None or p.name in allowed) for p in POOLS)


def test_shape_request_is_what_the_plan_carries() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 100}]}
    plan = plan_request(Estimator(Calibrator()).estimate(body, "g"), POOLS, PolicySettings())
    assert plan.shape == shape_request(body)
