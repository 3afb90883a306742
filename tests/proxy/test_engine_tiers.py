"""The engine with tiers and an exact count: far requests skip the character counts and learn
from their completed shape, an arbitrated count decides and is learned from once, as a usage
report would be (the caller's trust applies), and a count that cannot be the request's is
ignored."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from litellm_dualpool.config import load_plugin_config
from litellm_dualpool.core.calibration import Calibrator
from litellm_dualpool.core.policy import CountSource, Tier
from litellm_dualpool.core.tenant import ObservationTrust
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy.engine import DualPoolEngine
from litellm_dualpool.proxy.record import PlanRecord
from litellm_dualpool.tenancy import TenantPolicy
from tests.prometheus_text import registry_value

SHORT, LONG = 8192, 65536
PROSE = ("The quick brown fox jumps over the lazy dog while the pool router decides where "
         "each request should go. ")


def engine() -> tuple[DualPoolEngine, CollectorRegistry]:
    model_list = [{"model_name": "g", "litellm_params": {"model": "hosted_vllm/m",
                                                          "api_base": f"http://p{i}/v1"},
                   "model_info": {"max_model_len": limit}}
                  for i, limit in enumerate((SHORT, LONG))]
    registry = CollectorRegistry()
    config = load_plugin_config({"model_list": model_list})
    return DualPoolEngine(config, metrics=DualPoolMetrics(registry),
                          calibrator=Calibrator()), registry


def body(repeats: int, max_tokens: int = 16) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": PROSE * repeats}], "max_tokens": max_tokens}


def ambiguous(eng: DualPoolEngine, trust: ObservationTrust) -> PlanRecord:
    for repeats in range(250, 360):
        record = eng.plan(body(repeats), eng.groups["g"], TenantPolicy(observation_trust=trust))
        if record.plan.tier is Tier.AMBIGUOUS:
            return record
    raise AssertionError("no ambiguous request in the band")


def learned(registry: CollectorRegistry, outcome: str) -> float:
    return registry_value(registry, "dualpool_learning_samples_total", model_group="g",
                          outcome=outcome)


def test_tier_series_start_at_zero_and_count_decisions() -> None:
    eng, registry = engine()
    for tier in ("far", "near", "ambiguous"):
        assert registry_value(registry, "dualpool_decisions_by_tier_total", model_group="g",
                              tier=tier) == 0
    for outcome in ("exact", "timeout", "error", "unsupported", "skipped_busy",
                    "no_deployment"):
        assert registry_value(registry, "dualpool_arbitrations_total", model_group="g",
                              outcome=outcome) == 0
    record = eng.plan(body(3), eng.groups["g"], TenantPolicy())
    assert record.plan.tier is Tier.FAR and record.plan.shape.char_counts is None
    assert registry_value(registry, "dualpool_decisions_by_tier_total", model_group="g",
                          tier="far") == 1


def test_a_far_request_learns_from_its_completed_shape() -> None:
    eng, registry = engine()
    record = eng.plan(body(3), eng.groups["g"], TenantPolicy())
    assert record.draft is not None
    eng.on_success(record, {"max_model_len": SHORT}, 80)
    assert learned(registry, "learned") == 1
    assert record.draft.shape().char_counts is not None  # completed for learning


@pytest.mark.parametrize(("trust", "outcome"), [(ObservationTrust.TRUSTED, "learned"),
                                                (ObservationTrust.NONE, "untrusted")])
def test_an_arbitrated_count_decides_and_is_learned_once(trust: ObservationTrust,
                                                          outcome: str) -> None:
    eng, registry = engine()
    record = ambiguous(eng, trust)
    assert (record.plan.decision.pool, record.plan.arbiter_pool) == ("long", "short")
    exact = SHORT - record.plan.budget.output_tokens - 3
    counted = eng.arbitrated(record, exact)
    assert (counted.plan.decision.pool, counted.plan.count) == ("short", CountSource.ARBITRATED)
    assert counted.plan.total_tokens == exact + record.plan.budget.output_tokens
    assert counted["count"] == "arbitrated" and counted.progress.pool == "short"
    assert learned(registry, outcome) == 1
    eng.on_success(counted, {"max_model_len": SHORT}, exact)  # the usage: not learned again
    assert learned(registry, outcome) == 1 and learned(registry, "learned") == (
        1 if outcome == "learned" else 0)


def test_a_count_the_request_cannot_have_is_ignored() -> None:
    eng, registry = engine()
    record = ambiguous(eng, ObservationTrust.TRUSTED)
    assert eng.arbitrated(record, 10) is record  # far below its bytes at 8 bytes/token
    assert learned(registry, "rejected") == 1 and not record.progress.learned


def test_an_exact_count_one_token_over_the_short_pool_goes_long() -> None:
    eng, _ = engine()
    record = ambiguous(eng, ObservationTrust.TRUSTED)
    counted = eng.arbitrated(record, SHORT - record.plan.budget.output_tokens + 1)
    assert (counted.plan.decision.pool, counted.plan.count) == ("long", CountSource.ARBITRATED)


def pins(registry: CollectorRegistry) -> float:
    return registry_value(registry, "dualpool_affinity_total", model_group="g", outcome="pinned")


def test_an_ambiguous_plan_pins_its_conversation_only_once_its_count_decides() -> None:
    """Affinity and arbitration: the estimate of an ambiguous request may say long where the
    exact count says short, so the pin waits for the count (or, without one, for the estimate's
    pool to stand: `pin_estimated`)."""
    eng, registry = engine()
    record = ambiguous(eng, ObservationTrust.TRUSTED)
    assert record.plan.arbiter_pool == "short" and record.plan.decision.pool == "long"
    assert pins(registry) == 0  # not pinned on the estimate
    budget_output = record.plan.budget.output_tokens
    short_fit = eng.arbitrated(record, SHORT - budget_output - 500)
    assert short_fit.plan.decision.pool == "short"
    assert pins(registry) == 0  # the exact count fits short: nothing to hold

    record = ambiguous(eng, ObservationTrust.TRUSTED)
    long_fit = eng.arbitrated(record, SHORT - budget_output + 200)
    assert long_fit.plan.decision.pool == "long" and long_fit.conversation is not None
    assert pins(registry) == 1

    unanswered = ambiguous(eng, ObservationTrust.TRUSTED)
    unanswered.session_id = "another conversation"
    eng.pin_estimated(unanswered)  # no exact count came: the estimate's long pool stands
    assert unanswered.conversation is not None and pins(registry) == 2
