"""The influence guard, the learner's corroboration rule, and the observation wire format."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.shape import ContentClass, RequestShape, shape_request
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.state import Admission, InfluenceGuard, InfluenceLimits, Learner, Outcome
from litellm_dualpool.state.observation import Observation, decode, encode
from litellm_dualpool.tenancy import ObservationTrust

KEY = CategoryKey("llama", "prose")
N, T, X = ObservationTrust.NORMAL, ObservationTrust.TRUSTED, ObservationTrust.NONE


def shape(text_bytes: int = 4000, messages: int = 1) -> RequestShape:
    return RequestShape(text_bytes, 0, messages, 0, 0, 0, None, ContentClass.PROSE)


def obs(tokens: int, tenant: str = "a", *, trust: ObservationTrust = N, time_ms: int = 0,
        seq: int = 1, text_bytes: int = 4000) -> Observation:
    return Observation(KEY, shape(text_bytes), tokens, tenant, trust, "w1", seq, time_ms)


def test_a_lone_tenant_gets_its_quota_per_window_then_the_window_slides() -> None:
    guard = InfluenceGuard(InfluenceLimits(min_tenant_quota=3, window_seconds=60, buckets=6))
    verdicts = [guard.admit(KEY, "a", N, 1000 + i) for i in range(5)]
    assert verdicts == [Admission.ADMITTED] * 3 + [Admission.SHARE_CAP] * 2
    assert guard.admit(KEY, "a", N, 55_000) is Admission.SHARE_CAP  # still inside the window
    assert guard.admit(KEY, "a", N, 60_000) is Admission.ADMITTED   # first bucket expired


def test_a_flooding_tenant_keeps_at_most_its_share() -> None:
    guard = InfluenceGuard(InfluenceLimits(max_tenant_share=0.25, min_tenant_quota=0))
    admitted = {"h1": 0, "h2": 0, "h3": 0, "m": 0}
    for i in range(300):
        for tenant in ("h1", "h2", "h3"):
            admitted[tenant] += guard.admit(KEY, tenant, N, i) is Admission.ADMITTED
        for _ in range(10):
            admitted["m"] += guard.admit(KEY, "m", N, i) is Admission.ADMITTED
    assert admitted["h1"] == admitted["h2"] == admitted["h3"] == 300
    assert admitted["m"] <= 0.25 * sum(admitted.values()) + 1
    assert admitted["m"] >= 250  # but it is not shut out


def test_two_honest_tenants_never_throttle_each_other() -> None:
    guard = InfluenceGuard(InfluenceLimits(max_tenant_share=0.2, min_tenant_quota=0))
    verdicts = [guard.admit(KEY, tenant, N, i) for i in range(200) for tenant in ("a", "b")]
    assert set(verdicts) == {Admission.ADMITTED}


def test_trusted_is_always_admitted_and_none_never() -> None:
    guard = InfluenceGuard(InfluenceLimits(min_tenant_quota=0, max_tenant_share=0.1))
    assert {guard.admit(KEY, "ops", T, i) for i in range(50)} == {Admission.ADMITTED}
    assert guard.admit(KEY, "pub", X, 51) is Admission.UNTRUSTED


def test_tenants_beyond_the_cap_share_one_slot() -> None:
    guard = InfluenceGuard(InfluenceLimits(min_tenant_quota=1, max_tenant_share=0.01,
                                           max_tenants_per_key=3))
    first = [guard.admit(KEY, f"t{i}", N, 0) for i in range(3)]
    crowd = [guard.admit(KEY, f"t{i}", N, 0) for i in range(3, 30)]
    assert first == [Admission.ADMITTED] * 3
    # Each new tenant would be under its own quota; as one crowd they get one fair share.
    assert crowd.count(Admission.ADMITTED) == 2


def test_guard_snapshot_round_trips_through_json() -> None:
    guard = InfluenceGuard(InfluenceLimits(min_tenant_quota=2))
    for i in range(3):
        guard.admit(KEY, "a", N, i)
    copy = InfluenceGuard(guard.limits)
    copy.restore(json.loads(json.dumps(guard.snapshot())))
    assert copy.admit(KEY, "a", N, 5) is guard.admit(KEY, "a", N, 5) is Admission.SHARE_CAP
    with pytest.raises(ConfigError, match=r"guard\[0\]\.buckets\[0\]"):
        copy.restore([{"model_group": "g", "category": "c", "buckets": [["x", {}]]}])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcm"), st.integers(0, 5)), min_size=1, max_size=400),
       st.floats(0.05, 1.0), st.integers(0, 10))
def test_no_normal_tenant_exceeds_quota_or_share_in_any_window(
        events: list[tuple[str, int]], share: float, quota: int) -> None:
    limits = InfluenceLimits(max_tenant_share=share, min_tenant_quota=quota, window_seconds=1000,
                             buckets=1)
    guard = InfluenceGuard(limits)
    admitted: dict[str, int] = {}
    for tenant, _ in events:  # all inside one window
        before, total = admitted.get(tenant, 0), sum(admitted.values())
        tenants = len(admitted) + (0 if before else 1)
        if guard.admit(KEY, tenant, N, 0) is Admission.ADMITTED:
            admitted[tenant] = before + 1
            fair = max(share, 1 / tenants) if tenants >= 2 else share
            assert before < quota or before < fair * (total + 1)


def test_learner_reports_every_outcome() -> None:
    learner = Learner(Calibrator(), InfluenceGuard(InfluenceLimits(min_tenant_quota=1,
                                                                   max_tenant_share=0.01)))
    assert learner.apply(obs(1000, "a")) is Outcome.LEARNED
    assert learner.apply(obs(1000, "a", seq=2)) is Outcome.LIMITED
    assert learner.apply(obs(1000, "p", trust=X, seq=3)) is Outcome.UNTRUSTED
    assert learner.apply(obs(10, "b", seq=4)) is Outcome.REJECTED  # 400 bytes/token: out of bounds


def _warm(learner: Learner, tenants: tuple[str, ...] = ("h1", "h2"), count: int = 40) -> None:
    for i in range(count):
        assert learner.apply(obs(1000 + i % 7, tenants[i % len(tenants)], seq=i,
                                 time_ms=i)) is Outcome.LEARNED


def test_one_normal_tenant_alone_cannot_drag_a_warm_key() -> None:
    learner = Learner(Calibrator(), InfluenceGuard(InfluenceLimits(min_tenant_quota=10**6)))
    _warm(learner)
    before = learner.calibrator.ratio(KEY)
    outcomes = [learner.apply(obs(3000, "m", seq=100 + i, time_ms=100)) for i in range(30)]
    assert set(outcomes) == {Outcome.LIMITED}
    assert learner.calibrator.ratio(KEY) == before
    # Within max_deviation_fraction it is an ordinary observation.
    assert learner.apply(obs(1080, "m", seq=200, time_ms=200)) is Outcome.LEARNED


@pytest.mark.parametrize("confirm", ["second_tenant", "trusted"])
def test_a_corroborated_regime_change_is_learned(confirm: str) -> None:
    learner = Learner(Calibrator(), InfluenceGuard(InfluenceLimits(min_tenant_quota=10**6)))
    _warm(learner)
    before = learner.calibrator.ratio(KEY).bytes_per_token
    for i in range(60):
        tenant = "m" if i % 2 or confirm == "trusted" else "b"
        learner.apply(obs(3000, tenant, trust=T if confirm == "trusted" else N,
                          seq=100 + i, time_ms=100))
    assert learner.calibrator.ratio(KEY).bytes_per_token < 0.85 * before


def test_learner_snapshot_restores_calibration_guard_and_deviations() -> None:
    learner = Learner(Calibrator(), InfluenceGuard(InfluenceLimits(min_tenant_quota=10**6)))
    _warm(learner)
    for i in range(5):
        learner.apply(obs(3000, "m", seq=200 + i, time_ms=200))
    copy = Learner(Calibrator(), InfluenceGuard(learner.guard.limits))
    copy.restore(json.loads(json.dumps(learner.snapshot())))
    assert copy.calibrator.ratio(KEY) == learner.calibrator.ratio(KEY)
    assert copy.apply(obs(3000, "m", seq=300, time_ms=300)) is Outcome.LIMITED
    with pytest.raises(ConfigError, match="snapshot"):
        copy.restore({"kind": "other"})
    assert copy.calibrator.ratio(KEY) == learner.calibrator.ratio(KEY)  # untouched


def test_observation_wire_round_trip_and_rejects() -> None:
    original = obs(1234, "t0123456789ab", trust=T, seq=42, time_ms=1_700_000_000_000)
    assert decode(encode(original)) == original
    assert decode(encode(original).encode()) == original
    real = Observation(KEY, shape_request({"messages": [{"role": "user", "content": "Hi 42,\n"
                                                                              "ça va?"}]}),
                       9, "t", N, "w", 1, 0)
    assert real.shape.char_counts is not None
    assert decode(encode(real)) == real
    assert decode(json.dumps(json.loads(encode(real))[:16])).shape.char_counts is None
    good = json.loads(encode(original))
    for index, bad in [(0, 2), (3, -1), (7, "klingon"), (10, 0), (12, "full"), (1, "x" * 300),
                       (16, [1, 2]), (16, [1, 2, 3, 4, 5, -6])]:
        broken = list(good)
        broken[index] = bad
        with pytest.raises(ValueError):
            decode(json.dumps(broken))
    for junk in (b"\xff", "[]", "{}", "not json"):
        with pytest.raises(ValueError):
            decode(junk)
