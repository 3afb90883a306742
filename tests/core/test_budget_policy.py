"""Output budget and the dispatch policy (tables + the never-over-limit property)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from litellm_dualpool.core.budget import TokenBudget, output_budget_tokens, sequence_count
from litellm_dualpool.core.policy import (
    PolicySettings,
    PoolState,
    Reason,
    decide,
    decide_recovery,
)
from litellm_dualpool.errors import ConfigError, InvalidRequestError


@pytest.mark.parametrize(("body", "expected"), [
    ({}, 500),
    ({"max_tokens": 10}, 10),
    ({"max_completion_tokens": 20, "max_tokens": 10}, 20),
    ({"max_output_tokens": 30}, 30),
    ({"max_tokens": None}, 500),
    ({"max_tokens": 0}, 0),
])
def test_output_budget_precedence(body: dict[str, Any], expected: int) -> None:
    assert output_budget_tokens(body, 500) == expected


@pytest.mark.parametrize("bad", [-1, 1.5, 10.0, True, "10", [10]])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
def test_output_budget_rejects_bad_values(field: str, bad: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        output_budget_tokens({field: bad}, 500)
    assert info.value.field == field


def test_embeddings_have_no_output_budget() -> None:
    assert output_budget_tokens({"input": "x"}, 500, embedding=True) == 0


@pytest.mark.parametrize(("body", "expected"), [({}, 1), ({"n": 3}, 3), ({"n": 2, "best_of": 5}, 5)])
def test_sequences(body: dict[str, Any], expected: int) -> None:
    assert sequence_count(body) == expected


@pytest.mark.parametrize("body", [{"n": 0}, {"n": 1.0}, {"best_of": False}])
def test_sequences_reject_bad_values(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        sequence_count(body)


def test_n_does_not_enter_the_per_sequence_budget() -> None:
    assert TokenBudget(100, 50, sequences=4).total_tokens == 150


SHORT, LONG = PoolState("short", 8192), PoolState("long", 65536)
DEFAULT = PolicySettings()


@pytest.mark.parametrize(("budget", "pools", "settings", "kwargs", "pool", "reason"), [
    (100, [LONG, SHORT], DEFAULT, {}, "short", Reason.FITS),
    (8192, [SHORT, LONG], DEFAULT, {}, "short", Reason.FITS),
    (8193, [SHORT, LONG], DEFAULT, {}, "long", Reason.FITS),
    (70000, [SHORT, LONG], DEFAULT, {}, None, Reason.FITS_NOWHERE),
    (8000, [SHORT, LONG], PolicySettings(headroom_fraction=0.1), {}, "long", Reason.FITS),
    (65000, [SHORT, LONG], PolicySettings(headroom_fraction=0.1), {}, "long", Reason.FITS),
    (100, [PoolState("short", 8192, 0.95), LONG], DEFAULT, {}, "long", Reason.SPILLOVER),
    (100, [PoolState("short", 8192, 0.95), PoolState("long", 65536, 0.99)], DEFAULT, {},
     "short", Reason.FITS),
    (100, [PoolState("short", 8192, 0.95), LONG], PolicySettings(spillover_load_fraction=None),
     {}, "short", Reason.FITS),
    (100, [SHORT, LONG], DEFAULT, {"forced_pool": "long"}, "long", Reason.FORCED),
    (9000, [SHORT, LONG], DEFAULT, {"forced_pool": "short"}, "long", Reason.FITS),
    (100, [SHORT, LONG], DEFAULT, {"forced_pool": "nope"}, "short", Reason.FITS),
    (9000, [SHORT, LONG], DEFAULT, {"allowed_pools": frozenset({"short"})}, None,
     Reason.NOT_ALLOWED),
    (100, [SHORT, LONG], DEFAULT, {"allowed_pools": frozenset({"long"})}, "long", Reason.FITS),
    (3000, [PoolState("s", 2048), PoolState("m", 4096), PoolState("l", 32768)], DEFAULT, {},
     "m", Reason.FITS),
    (3000, [PoolState("s", 2048), PoolState("m", 4096, 1.0), PoolState("l", 32768)], DEFAULT, {},
     "l", Reason.SPILLOVER),
])
def test_decide_table(budget: int, pools: list[PoolState], settings: PolicySettings,
                      kwargs: dict[str, Any], pool: str | None, reason: Reason) -> None:
    decision = decide(budget, pools, settings, **kwargs)
    assert (decision.pool, decision.reason, decision.budget_tokens) == (pool, reason, budget)
    if pool is not None:
        assert decision.limit_tokens == {p.name: p.max_model_len for p in pools}[pool]


def test_fits_nowhere_carries_the_numbers() -> None:
    decision = decide(70000, [SHORT, LONG], DEFAULT, category="prose")
    assert (decision.budget_tokens, decision.limit_tokens, decision.category) == (
        70000, 65536, "prose")


def test_over_every_pool_only_by_the_margin_goes_to_the_largest() -> None:
    # conservative 70000 > 65536, optimistic 64000 <= 65536: the long backend's count decides
    decision = decide(70000, [SHORT, LONG], DEFAULT, floor_tokens=64000)
    assert (decision.pool, decision.reason, decision.limit_tokens) == ("long", Reason.BORDERLINE, 65536)
    # surely too large: refused as before
    assert decide(70000, [SHORT, LONG], DEFAULT, floor_tokens=65537).reason == Reason.FITS_NOWHERE
    # a tenant without the long pool is still refused, as NOT_ALLOWED
    denied = decide(70000, [SHORT, LONG], DEFAULT, floor_tokens=64000, allowed_pools=frozenset({"short"}))
    assert (denied.pool, denied.reason) == (None, Reason.NOT_ALLOWED)
    # a budget that fits somewhere is placed on the conservative estimate alone
    assert decide(9000, [SHORT, LONG], DEFAULT, floor_tokens=100).pool == "long"


def test_borderline_ignores_spillover_and_keeps_equal_largest_pools() -> None:
    busy_long = PoolState("long", 65536, 1.0)
    twin = PoolState("long-b", 65536, 0.0)
    decision = decide(70000, [SHORT, busy_long, twin], DEFAULT, floor_tokens=60000)
    assert decision.reason == Reason.BORDERLINE and decision.pool in ("long", "long-b")


def test_the_refusal_floor_is_the_least_window_a_backend_serves_in() -> None:
    # the optimistic prompt (the calibrator's: point less the margin, kept above the bytes
    # bound) plus one output token: vLLM lowers a max_tokens that only overflows with the prompt
    budget = TokenBudget(prompt_tokens=1100, output_tokens=200, prompt_tokens_point=1000,
                         prompt_tokens_optimistic=900)
    assert (budget.total_tokens, budget.refusal_floor_tokens) == (1300, 901)
    assert TokenBudget(prompt_tokens=50, output_tokens=7).refusal_floor_tokens == 51  # no error model
    assert TokenBudget(prompt_tokens=300, output_tokens=0, prompt_tokens_point=100,
                       prompt_tokens_optimistic=0).refusal_floor_tokens == 1
    # ... or the output budget alone when larger: vLLM refuses max_tokens above max_model_len
    huge_output = TokenBudget(prompt_tokens=10, output_tokens=70000, prompt_tokens_point=9,
                              prompt_tokens_optimistic=8)
    assert huge_output.refusal_floor_tokens == 70000
    decision = decide(huge_output.total_tokens, [SHORT, LONG], DEFAULT, floor_tokens=huge_output.refusal_floor_tokens)
    assert decision.reason == Reason.FITS_NOWHERE
    # a 60K prompt asking for 20K more tokens: the long backend serves it with fewer
    wide = TokenBudget(prompt_tokens=60000, output_tokens=20000, prompt_tokens_point=59000,
                       prompt_tokens_optimistic=58000)
    decision = decide(wide.total_tokens, [SHORT, LONG], DEFAULT, floor_tokens=wide.refusal_floor_tokens)
    assert (decision.pool, decision.reason) == ("long", Reason.BORDERLINE)


@pytest.mark.parametrize(("pools", "path"), [
    ([], "pools"),
    ([SHORT, PoolState("short", 100)], "pools[1].name"),
    ([PoolState("x", 0)], "pools[0].max_model_len"),
])
def test_bad_pools_are_config_errors(pools: list[PoolState], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        decide(10, pools, DEFAULT)
    assert info.value.path == path


@pytest.mark.parametrize("kwargs", [{"headroom_fraction": -0.1},
                                    {"spillover_load_fraction": 0.0},
                                    {"headroom_fraction": float("nan")}])
def test_bad_policy_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PolicySettings(**kwargs)


def test_recovery_goes_to_the_next_larger_pool() -> None:
    pools = [PoolState("s", 4096), PoolState("m", 8192), PoolState("l", 65536)]
    assert decide_recovery(3000, pools, "s").pool == "m"
    assert decide_recovery(3000, pools, "m").reason == Reason.RECOVERY
    assert decide_recovery(3000, pools, "l").reason == Reason.FITS_NOWHERE


pool_lists = st.lists(
    st.builds(PoolState, st.uuids().map(str), st.integers(1, 200_000),
              st.none() | st.floats(0, 2)), min_size=1, max_size=5)


@given(st.integers(0, 250_000), pool_lists, st.floats(0, 1), st.none() | st.floats(0.01, 2),
       st.none() | st.just(0))
def test_never_sends_a_budget_above_the_pool_limit(
        budget: int, pools: list[PoolState], headroom: float, spill: float | None,
        forced_index: int | None) -> None:
    settings = PolicySettings(headroom_fraction=headroom, spillover_load_fraction=spill)
    forced = pools[forced_index].name if forced_index is not None else None
    decision = decide(budget, pools, settings, forced_pool=forced)
    limits = {p.name: p.max_model_len for p in pools}
    if decision.pool is None:
        assert decision.reason in (Reason.FITS_NOWHERE, Reason.NOT_ALLOWED)
        assert budget > max(limits.values())
    else:
        assert budget <= limits[decision.pool] == decision.limit_tokens
        if decision.reason == Reason.FITS:  # the smallest pool that fits with headroom, or bare
            smaller = [v for v in limits.values() if budget * (1 + headroom) <= v]
            assert decision.limit_tokens == (min(smaller) if smaller else max(limits.values()))


@given(st.integers(0, 250_000), st.integers(0, 250_000), pool_lists)
def test_refuses_only_what_surely_fits_nowhere(budget: int, floor: int, pools: list[PoolState]) -> None:
    floor = min(floor, budget)  # the optimistic estimate is never above the conservative one
    decision = decide(budget, pools, DEFAULT, floor_tokens=floor)
    largest = max(p.max_model_len for p in pools)
    if decision.pool is None:
        assert floor > largest
    elif budget > decision.limit_tokens:
        assert decision.reason == Reason.BORDERLINE and decision.limit_tokens == largest >= floor
