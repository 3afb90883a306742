"""The tiers: one rule (`core.policy.tier_of`) says when bytes alone decide (far), when the
character counts are needed (near) and when only the exact count can tell (ambiguous)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_dualpool.core.calibration import FAR_MARGIN_FRACTION, Calibrator, CategoryKey
from litellm_dualpool.core.estimator import Estimator, learning_shape
from litellm_dualpool.core.plan import Plan, plan_counted, plan_request
from litellm_dualpool.core.policy import (
    CountSource,
    PolicySettings,
    PoolState,
    Reason,
    Tier,
    decide,
    idle_choice,
    tier_of,
)
from litellm_dualpool.core.shape import (
    ContentClass,
    bytes_content_class,
    measure_request,
    shape_request,
)
from litellm_dualpool.errors import NoPoolFitsError

LIMITS = (8192, 65536)
POOLS = [PoolState("short", LIMITS[0]), PoolState("long", LIMITS[1])]
PROSE = ("The quick brown fox jumps over the lazy dog while the pool router decides where "
         "each request should go. ")


def chat(text: str, max_tokens: int = 256) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


@pytest.mark.parametrize(("low", "high", "wide", "tier"), [
    (100, 5000, True, Tier.FAR),           # every budget fits the short pool with headroom
    (9000, 60000, True, Tier.FAR),         # every budget is over the short pool, in the long
    (7000, 9000, True, Tier.NEAR),         # the wide range reaches over the short limit
    (60000, 70000, True, Tier.NEAR),       # may fit nowhere: the near tier decides refusals
    (7000, 8000, False, Tier.NEAR),        # optimistic..conservative both in the short pool
    (8000, 8300, False, Tier.AMBIGUOUS),   # straddles the short limit
    (65000, 66000, False, Tier.AMBIGUOUS), # straddles the largest limit (borderline)
    (70000, 71000, False, Tier.NEAR),      # fits nowhere either way
])
def test_tier_of_a_range(low: int, high: int, wide: bool, tier: Tier) -> None:
    assert tier_of(low, high, LIMITS, 0.0, wide=wide) is tier


def test_headroom_counts_in_the_choice() -> None:
    assert idle_choice(8000, LIMITS, 0.0) == (0, True)
    assert idle_choice(8000, LIMITS, 0.05) == (1, True)     # 8400 > 8192: the long pool
    assert idle_choice(70000, LIMITS, 0.0) == (None, False)
    assert tier_of(7700, 8000, LIMITS, 0.05, wide=False) is Tier.AMBIGUOUS


@settings(max_examples=200, deadline=None)
@given(low=st.integers(0, 80000), width=st.integers(0, 20000),
       headroom=st.sampled_from([0.0, 0.02, 0.1]))
def test_a_far_range_is_decided_alike_at_every_budget(low: int, width: int,
                                                       headroom: float) -> None:
    """The rule's promise: far means the policy sends every budget of the range to one pool."""
    high = low + width
    if tier_of(low, high, LIMITS, headroom, wide=True) is Tier.FAR:
        s = PolicySettings(headroom_fraction=headroom, spillover_load_fraction=None)
        pools = {decide(b, POOLS, s).pool for b in range(low, high + 1, max(1, width // 50))}
        assert len(pools) == 1 and None not in pools


def test_small_and_huge_requests_are_far_and_skip_the_character_counts() -> None:
    estimator = Estimator(Calibrator())
    small = estimator.estimate(chat(PROSE * 5), "g", limits=LIMITS)
    huge = estimator.estimate(chat(PROSE * 1500), "g", limits=LIMITS)  # ~165 KB: over 8K
    assert (small.tier, huge.tier) == (Tier.FAR, Tier.FAR)
    assert small.shape.char_counts is None and huge.shape.char_counts is None
    s = PolicySettings(spillover_load_fraction=None)
    assert plan_request(small, POOLS, s).decision.pool == "short"
    assert plan_request(huge, POOLS, s).decision.pool == "long"
    # without limits the estimate is the full one, as before
    assert estimator.estimate(chat(PROSE * 5), "g").shape.char_counts is not None


def test_a_far_estimate_is_the_full_estimate_of_the_same_request_within_its_margin() -> None:
    calibrator = Calibrator()
    estimator = Estimator(calibrator)
    rng = random.Random(3)
    for size in (2, 5, 20, 300, 3000):
        body = chat(" ".join(rng.choice(PROSE.split()) for _ in range(size * 15)))
        far = estimator.estimate(body, "g", limits=(10**8, 2 * 10**8))
        full = estimator.estimate(body, "g")
        assert far.tier is Tier.FAR
        point, full_point = far.budget.prompt_tokens_point, full.budget.prompt_tokens_point
        assert point is not None and full_point is not None
        assert abs(point - full_point) <= FAR_MARGIN_FRACTION * full_point + 1


def test_near_the_limit_the_counts_are_made_and_a_straddle_is_ambiguous() -> None:
    estimator = Estimator(Calibrator())
    tiers = set()
    for repeats in range(250, 360, 4):  # ~27-39 KB of prose: the band of an 8K pool
        estimate = estimator.estimate(chat(PROSE * repeats, 16), "g", limits=LIMITS)
        tiers.add(estimate.tier)
        if estimate.tier is not Tier.FAR:
            assert estimate.shape.char_counts is not None
        if estimate.tier is Tier.AMBIGUOUS:
            b = estimate.budget
            assert b.prompt_tokens_optimistic is not None
            assert b.prompt_tokens_optimistic + b.output_tokens <= LIMITS[0] < b.total_tokens
    assert Tier.AMBIGUOUS in tiers and Tier.NEAR in tiers


def ambiguous_plan() -> Plan:
    estimator = Estimator(Calibrator())
    for repeats in range(250, 360):
        estimate = estimator.estimate(chat(PROSE * repeats, 16), "g", limits=LIMITS)
        if estimate.tier is Tier.AMBIGUOUS:
            return plan_request(estimate, POOLS, PolicySettings(), plan_id="a-1")
    raise AssertionError("no ambiguous request in the band")


def test_an_ambiguous_plan_names_the_smaller_pool_to_ask_and_the_count_decides() -> None:
    plan = ambiguous_plan()
    assert (plan.tier, plan.count, plan.arbiter_pool) == (Tier.AMBIGUOUS,
                                                           CountSource.ESTIMATED, "short")
    assert plan.decision.pool == "long"  # the conservative estimate does not fit the short
    fits = plan_counted(plan, LIMITS[0] - plan.budget.output_tokens, POOLS, PolicySettings(
        headroom_fraction=0.1))  # exact: no headroom, vLLM's own rule decides
    assert (fits.decision.pool, fits.decision.reason, fits.count) == (
        "short", Reason.FITS, CountSource.ARBITRATED)
    assert fits.budget.prompt_tokens == fits.budget.prompt_tokens_optimistic
    assert (fits.id, fits.tier, fits.arbiter_pool) == (plan.id, Tier.AMBIGUOUS, None)
    over = plan_counted(plan, LIMITS[0] - plan.budget.output_tokens + 1, POOLS, PolicySettings())
    assert over.decision.pool == "long"
    nowhere = plan_counted(plan, LIMITS[1], POOLS, PolicySettings())
    assert isinstance(nowhere.refusal(), NoPoolFitsError)
    with pytest.raises(ValueError):
        plan_counted(plan, -1, POOLS, PolicySettings())


def test_tier_and_count_round_trip_through_json() -> None:
    plan = ambiguous_plan()
    counted = plan_counted(plan, 7000, POOLS, PolicySettings())
    for p in (plan, counted):
        assert Plan.from_metadata(json.loads(json.dumps(p.to_metadata()))) == p


def test_forced_pools_media_and_token_ids_are_never_arbitrated() -> None:
    estimator = Estimator(Calibrator())
    for repeats in range(250, 360):
        estimate = estimator.estimate(chat(PROSE * repeats, 16), "g", limits=LIMITS)
        if estimate.tier is Tier.AMBIGUOUS:
            break
    forced = plan_request(estimate, POOLS, PolicySettings(), forced_pool="long")
    assert forced.arbiter_pool is None
    ids = estimator.estimate({"prompt": list(range(7000)), "max_tokens": 16}, "g", limits=LIMITS)
    assert plan_request(ids, POOLS, PolicySettings()).count is CountSource.EXACT
    assert ids.tier is not Tier.AMBIGUOUS


@pytest.mark.parametrize(("text", "structured", "tools", "expected"), [
    ("plain English text", 0, False, ContentClass.PROSE),
    ("これは日本語の文章です。" * 5, 0, False, ContentClass.CJK),
    ("résumé naïve café " * 5, 0, False, ContentClass.PROSE),  # 2-byte accents are not CJK
    ("x", 100, False, ContentClass.STRUCTURED),
    ("x", 0, True, ContentClass.STRUCTURED),
])
def test_the_class_read_from_sizes(text: str, structured: int, tools: bool,
                                   expected: ContentClass) -> None:
    assert bytes_content_class(len(text.encode()), len(text), structured, tools) is expected


def test_learning_completes_a_far_shape_once_under_its_full_class() -> None:
    code = "def f(x):\n    return [x * 2 for x in range(10)]  # {a: b}\n" * 20
    draft = measure_request(chat(code))
    far = draft.bytes_shape()
    assert far.char_counts is None and far.content_class is ContentClass.PROSE
    shape, key = learning_shape(far, CategoryKey("g", far.content_class.value), draft)
    assert shape == shape_request(chat(code)) and shape.char_counts is not None
    assert key == CategoryKey("g", "code")
    assert draft.shape() is shape  # computed once
    named, named_key = learning_shape(far, CategoryKey("g", "mine"), draft)
    assert named_key == CategoryKey("g", "mine") and named is shape


def test_the_far_arithmetic_is_the_calibrators_own_estimate_without_counts() -> None:
    calibrator = Calibrator()
    estimator = Estimator(calibrator)
    rng = random.Random(5)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"a": "b"}}}]
    for i in range(40):  # a learned key, tools and messages included
        body = {"messages": [{"role": "user", "content": PROSE * rng.randint(1, 30)}] * 2,
                "tools": tools}
        estimator.learn(estimator.estimate(body, "g"), 30 + 25 * i)
    for body in (chat(PROSE * 7), {"messages": [{"role": "user", "content": PROSE * 9}] * 3,
                                   "tools": tools}, {"prompt": PROSE * 4}):
        shape = measure_request(body).bytes_shape()
        key = CategoryKey("g", shape.content_class.value)
        low, optimistic, point, conservative, high = calibrator.estimate_far(key, shape)
        assert (optimistic, point, conservative) == calibrator.estimate_range(key, shape)
        assert low <= optimistic <= point <= conservative <= high


def test_the_far_range_spans_the_neighbour_class() -> None:
    calibrator = Calibrator()
    estimator = Estimator(calibrator)
    code = "def f(x):\n    return [x * 2 for x in range(10)]  # {a: b}\n" * 30
    for i in range(30):  # code at ~2 bytes/token: far from prose's cold 4
        estimator.learn(estimator.estimate(chat(code), "g"), len(code) // 2 + i)
    shape = measure_request(chat(PROSE * 20)).bytes_shape()
    alone = calibrator.estimate_far(CategoryKey("g", "prose"), shape)
    both = calibrator.estimate_far(CategoryKey("g", "prose"), shape, CategoryKey("g", "code"))
    assert both[4] > alone[4] and both[:4] == alone[:4]


# -- skipping a far attempt that cannot succeed (`estimator._surely_not_far`) ---------------
def test_surely_not_far_is_a_band_around_the_room_for_the_prompt() -> None:
    from litellm_dualpool.core.estimator import _surely_not_far

    assert _surely_not_far(1000.0, 0, [1000], 0.0)             # the limit at the estimate
    assert _surely_not_far(1000.0, 200, [1150], 0.0)           # room 950: within 25%
    assert not _surely_not_far(1000.0, 0, [2000, 4000], 0.0)   # room 2000: far below it
    assert not _surely_not_far(1000.0, 0, [500], 0.0)          # far above it
    assert _surely_not_far(1000.0, 0, [500, 1200], 0.0)        # any limit in the band
    assert not _surely_not_far(1000.0, 0, [1300], 0.0)         # room 1300 > 1250
    assert _surely_not_far(1000.0, 0, [1300], 0.1)             # headroom: room 1182


@settings(max_examples=200, deadline=None)
@given(st.integers(200, 60000), st.integers(0, 4000), st.integers(1, 4),
       st.sampled_from([0.0, 0.02, 0.1]), st.floats(0.3, 3.0))
def test_surely_not_far_only_where_the_far_tier_fails(
        text_bytes: int, output: int, messages: int, headroom: float, limit_factor: float
        ) -> None:
    """With the key's own ratio, a request `_surely_not_far` rules out is one the far tier would
    not decide: the band lies inside the far range's guaranteed margin."""
    from litellm_dualpool.core.estimator import _surely_not_far

    calibrator = Calibrator()
    estimator = Estimator(calibrator)
    per = max(text_bytes // messages, 1)
    body = {"messages": [{"role": "user", "content": (PROSE * (per // len(PROSE) + 1))[:per]}
                         for _ in range(messages)], "max_tokens": output}
    draft = measure_request(body)
    shape = draft.bytes_shape()
    key = CategoryKey("g", shape.content_class.value)
    point = calibrator.estimate_far(key, shape)[2]
    limits = [max(1, int((point + output) * limit_factor)), 10**7]
    if _surely_not_far(float(point), output, limits, headroom):
        low, _, _, _, high = calibrator.estimate_far(
            key, shape, CategoryKey("g", ContentClass.CODE.value))
        assert tier_of(low + output, high + output, limits, headroom, wide=True) is not Tier.FAR
        assert estimator.estimate(body, "g", limits=limits,
                                  headroom_fraction=headroom).tier is not Tier.FAR


def test_a_near_request_skips_the_far_attempt_once_the_ratio_is_known() -> None:
    """The second near-limit request of a key is not tried far (the calibrator's far range is
    not asked), and its estimate is the one the full path gives."""
    calls = []

    class Counting(Calibrator):
        def estimate_far(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(1)
            return super().estimate_far(*args, **kwargs)

    body = chat(PROSE * 300, max_tokens=64)  # ~6.9K tokens at 4 bytes per token: near 8192
    estimator = Estimator(Counting())
    first = estimator.estimate(body, "g", limits=LIMITS)
    assert first.tier is not Tier.FAR and len(calls) == 1
    second = estimator.estimate(body, "g", limits=LIMITS)
    assert len(calls) == 1  # skipped
    assert second == first
    fresh = Estimator(Calibrator()).estimate(body, "g", limits=LIMITS)
    assert fresh.budget == second.budget and fresh.tier is second.tier
    far_body = chat(PROSE * 20)  # far from both limits: still tried far, and decided so
    assert estimator.estimate(far_body, "g", limits=LIMITS).tier is Tier.FAR
    assert len(calls) == 2
