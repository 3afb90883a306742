"""Poisoning attempts against a shared calibration key, with real prose and the real Llama-3
tokenizer: a flooding tenant must not move the key outside its bounds, nor flip where other
tenants' requests go. Each attack is first shown to work on the unguarded calibrator."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from poison import Sample, body, high_ratio_attack, honest_text, low_ratio_attack, sample

from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.estimator import Estimator
from litellm_dualpool.core.policy import PolicySettings, PoolState, decide
from litellm_dualpool.state import InfluenceGuard, Learner, Observation
from litellm_dualpool.tenancy import ObservationTrust

KEY = CategoryKey("llama", "prose")
POOLS = [PoolState("short", 4096), PoolState("long", 16384)]
SECONDS, ATTACK_FROM, BURST, BURST_EVERY = 600, 60, 20, 2

Feed = Callable[[Sample, str, int], None]


def honest_samples() -> list[Sample]:
    rng = random.Random(3)
    return [sample(honest_text(rng, rng.randint(300, 8000))) for _ in range(120)]


HONEST = honest_samples()
ATTACKS = {
    "low_ratio": sample(low_ratio_attack(3000)),      # ~1.1 bytes/token: estimates x4
    "high_ratio": sample(high_ratio_attack(800)),     # ~7.8 bytes/token: estimates /1.7
    "subtle": sample(honest_text(random.Random(12), 3000) + "\ua66e" * 50),  # ~-14%, no outlier
}


def run(feed: Feed, attack: Sample | None, tenants: tuple[str, ...] = ("h1", "h2"), *,
        attack_from: int = ATTACK_FROM, honest_until: int = SECONDS) -> None:
    """One honest request a second (tenants in turn); bursts of the attack every 2 s."""
    count = 0
    for second in range(SECONDS):
        now = second * 1000
        if second < honest_until:
            feed(HONEST[count % len(HONEST)], tenants[count % len(tenants)], now)
            count += 1
        if attack is not None and second >= attack_from and second % BURST_EVERY == 0:
            for i in range(BURST):
                feed(attack, "mallory", now + 1 + i)


def guarded() -> tuple[Calibrator, Feed]:
    learner = Learner(Calibrator(), InfluenceGuard())
    seq = iter(range(1, 10**9))

    def feed(s: Sample, tenant: str, now: int) -> None:
        learner.apply(Observation(KEY, s.shape, s.prompt_tokens, tenant, ObservationTrust.NORMAL,
                                  "w", next(seq), now))
    return learner.calibrator, feed


def unguarded() -> tuple[Calibrator, Feed]:
    calibrator = Calibrator()

    def feed(s: Sample, tenant: str, now: int) -> None:
        calibrator.observe(KEY, s.shape, s.prompt_tokens)
    return calibrator, feed


def probes() -> list[dict[str, object]]:
    """Other tenants' requests: prose from 1 to 60 KB, with 0 to 4K output tokens."""
    rng = random.Random(5)
    return [dict(body(honest_text(rng, size)), max_tokens=out)
            for size in range(1000, 60000, 700) for out in (0, 512, 4096)]


def budgets(calibrator: Calibrator) -> list[int]:
    estimator = Estimator(calibrator)
    return [estimator.estimate(p, "llama", category="prose").budget.total_tokens
            for p in probes()]


def decisions(calibrator: Calibrator) -> list[str | None]:
    return routed(budgets(calibrator))


def routed(totals: list[int]) -> list[str | None]:
    return [decide(total, POOLS, PolicySettings(spillover_load_fraction=None)).pool
            for total in totals]


#: A probe whose budget is within this fraction of a pool's limit sits on the boundary: any
#: change of the learned state, even 0.1% from one honest sample more or less, may move it.
BOUNDARY = 0.005


def flips_off_boundary(calibrator: Calibrator, baseline: Calibrator) -> list[int]:
    """Probes that go elsewhere than with the baseline, except those on a pool boundary."""
    headroom = 1 + PolicySettings().headroom_fraction
    limits = [edge for pool in POOLS for edge in (pool.max_model_len,
                                                   pool.max_model_len / headroom)]
    then = budgets(baseline)
    return [i for i, (total, now, before) in enumerate(zip(
                then, decisions(calibrator), routed(then), strict=True))
            if now != before and all(abs(total - limit) > BOUNDARY * limit for limit in limits)]


@pytest.fixture(scope="module")
def baseline() -> Calibrator:
    calibrator, feed = guarded()
    run(feed, None)
    return calibrator


def relative_change(calibrator: Calibrator, baseline: Calibrator) -> tuple[float, float]:
    now, then = calibrator.ratio(KEY), baseline.ratio(KEY)
    return (abs(now.bytes_per_token / then.bytes_per_token - 1),
            abs(now.conservative_bytes_per_token / then.conservative_bytes_per_token - 1))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_the_attack_moves_an_unguarded_calibrator_but_only_within_bounds(
        attack: str, baseline: Calibrator) -> None:
    calibrator, feed = unguarded()
    run(feed, ATTACKS[attack])
    point, conservative = relative_change(calibrator, baseline)
    assert max(point, conservative) > 0.03  # the ratio, or the spread that guards it, moves
    assert flips_off_boundary(calibrator, baseline) != []
    settings = calibrator.settings
    assert settings.min_bytes_per_token <= calibrator.ratio(KEY).bytes_per_token <= (
        settings.max_bytes_per_token)


@pytest.mark.parametrize("honest_tenants", [("h1", "h2"), ("h1",)])
@pytest.mark.parametrize("attack", ["low_ratio", "high_ratio"])
def test_outlier_floods_leave_the_key_and_everyone_elses_routing_unchanged(
        attack: str, honest_tenants: tuple[str, ...], baseline: Calibrator) -> None:
    calibrator, feed = guarded()
    run(feed, ATTACKS[attack], honest_tenants)
    point, conservative = relative_change(calibrator, baseline)
    assert point < 0.02 and conservative < 0.02
    assert flips_off_boundary(calibrator, baseline) == []


def test_a_subtle_flood_is_diluted_to_its_tenants_share(baseline: Calibrator) -> None:
    """A flood whose ratio is 14% off (not an outlier: it could be honest text) moves the key by
    at most its tenant's share of it: a third beside two honest tenants, half beside one."""
    attack = ATTACKS["subtle"]
    offset = 1 - (attack.shape.total_bytes / attack.prompt_tokens) / (
        baseline.ratio(KEY).bytes_per_token)
    unguarded_calibrator, feed = unguarded()
    run(feed, attack)
    assert relative_change(unguarded_calibrator, baseline)[0] > 0.8 * offset
    for tenants, share in ((("h1", "h2"), 0.34), (("h1",), 0.5)):
        calibrator, feed = guarded()
        run(feed, attack, tenants)
        assert relative_change(calibrator, baseline)[0] < share * offset + 0.01


@pytest.mark.parametrize("attack", ["low_ratio", "high_ratio"])
def test_a_lone_flood_in_a_quiet_period_cannot_move_a_warm_key(attack: str) -> None:
    honest_only, feed = guarded()
    run(feed, None, honest_until=ATTACK_FROM)
    attacked, feed = guarded()
    run(feed, ATTACKS[attack], honest_until=ATTACK_FROM)
    assert attacked.ratio(KEY) == honest_only.ratio(KEY)
    assert decisions(attacked) == decisions(honest_only)


def test_the_guard_costs_honest_traffic_little(baseline: Calibrator) -> None:
    """Honest traffic alone, guarded or not, routes the same."""
    calibrator, feed = unguarded()
    run(feed, None)
    point, conservative = relative_change(calibrator, baseline)
    assert point < 0.005 and conservative < 0.005
    assert decisions(calibrator) == decisions(baseline)
