"""Two real proxies (one with two workers) sharing calibration state through the machine's Redis
under a key prefix of their own: what one learns the others use, tenants' policies hold, a
poisoning flood changes nobody's routing, a restarted proxy keeps the learned ratios, and the
two-worker proxy's /metrics aggregates its workers."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from poison import honest_text, low_ratio_attack
from proxies import Proxy, backends, proxy_config, running, samples, value
from redis_helpers import SHARED_HOST, SHARED_PORT, shared_prefix
from tenant_auth import TENANTS

from tests.e2e.plugin_stack import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

ALPHA, BETA, MALLORY, OPS, BATCH, BROKEN, PROBE = (
    next(k for k, v in TENANTS.items() if v["key_alias"] == alias)
    for alias in ("alpha", "beta", "mallory", "ops", "batch", "broken", "probe"))
SHORT_LEN, LONG_LEN = 4096, 16384
PROBES = [honest_text(random.Random(seed), size) for seed, size in ((21, 1500), (22, 6000))]


@dataclass
class Fleet:
    a: Proxy  # two workers
    b: Proxy
    cold: tuple[int, ...] | None = None  # the probe budgets before anything was learned

    def budgets(self, proxy: Proxy, repeat: int = 1) -> set[tuple[int, ...]]:
        """The probe budgets, asked `repeat` times (a two-worker proxy answers from either)."""
        return {tuple(proxy.budget(PROBE, text, max_tokens=16) for text in PROBES)
                for _ in range(repeat)}




@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("shared")
    with shared_prefix("e2e") as prefix, backends(root, ("short", SHORT_LEN),
                                                  ("long", LONG_LEN)) as pools:
        settings = {"state": {"backend": "redis", "key_prefix": prefix,
                              "redis": {"host": SHARED_HOST, "port": SHARED_PORT},
                              "sync_interval_seconds": 0.2, "snapshot_interval_seconds": 1.0}}
        config = proxy_config("llama", pools, settings)
        multiproc = root / "prometheus-a"
        multiproc.mkdir()
        a = Proxy("a", config, root / "a", workers=2,
                  env={"PROMETHEUS_MULTIPROC_DIR": str(multiproc)})
        b = Proxy("b", config, root / "b")
        with running(a, b):
            yield Fleet(a, b)


def test_what_one_proxy_learns_the_others_use(fleet: Fleet) -> None:
    (cold,) = fleet.budgets(fleet.b)
    fleet.cold = cold
    assert fleet.budgets(fleet.a, repeat=4) == {cold}
    rng = random.Random(1)
    for i in range(24):
        key = OPS if i % 3 == 0 else (ALPHA, BETA)[i % 2]
        assert fleet.b.chat(key, honest_text(rng, rng.randint(800, 7000)),
                            max_tokens=8).status_code == 200
    eventually(lambda: fleet.budgets(fleet.b) != {cold})
    # Same log, same rules: both workers of the other proxy reach exactly the state of the
    # proxy that learned (compared together: b may still be applying its last batch).
    eventually(lambda: len(fleet.budgets(fleet.a, repeat=4) | fleet.budgets(fleet.b)) == 1)
    assert fleet.budgets(fleet.b) != {cold}


def test_a_tenant_without_long_pool_rights_gets_a_clear_400(fleet: Fleet) -> None:
    short_fit = fleet.a.chat(BATCH, "Summarise this.", max_tokens=64)
    assert short_fit.status_code == 200
    assert short_fit.headers["x-dualpool-pool"] == "short"
    over = fleet.a.chat(BATCH, "Summarise this.", max_tokens=SHORT_LEN + 100)
    assert over.status_code == 400
    message = over.text
    assert "does not allow" in message and str(SHORT_LEN) in message
    assert fleet.a.chat(ALPHA, "Summarise this.", max_tokens=SHORT_LEN + 100).status_code == 200


def test_a_malformed_key_policy_is_refused_naming_the_field(fleet: Fleet) -> None:
    response = fleet.b.chat(BROKEN, "hello", max_tokens=8)
    assert response.status_code == 403
    assert "key metadata.dualpool_policy.allow_long_pool" in response.text


def test_a_poisoning_flood_changes_nobody_elses_routing(fleet: Fleet) -> None:
    rng = random.Random(2)
    for i in range(12):  # honest traffic keeps the key warm
        fleet.b.chat((ALPHA, BETA)[i % 2], honest_text(rng, rng.randint(800, 7000)), max_tokens=8)
    time.sleep(1.0)  # let both proxies apply it
    before_a, before_b = fleet.budgets(fleet.a, repeat=3), fleet.budgets(fleet.b)
    assert before_a == before_b and len(before_a) == 1
    limited_before = value(fleet.b.metrics(), "dualpool_state_observations_total",
                           outcome="limited")
    attack = low_ratio_attack(1000)  # ~1.2 bytes/token, classified as prose
    for _ in range(40):
        assert fleet.a.chat(MALLORY, attack, max_tokens=8).status_code == 200
    eventually(lambda: value(fleet.b.metrics(), "dualpool_state_observations_total",
                             outcome="limited") >= limited_before + 30)
    assert fleet.budgets(fleet.a, repeat=3) == before_a
    assert fleet.budgets(fleet.b) == before_b


def test_the_two_worker_proxy_aggregates_its_metrics(fleet: Fleet) -> None:
    before = value(fleet.a.metrics(), "dualpool_requests_total", model_group="llama")
    for _ in range(10):
        assert fleet.a.chat(OPS, "Count me.", max_tokens=4).status_code == 200
    text = fleet.a.metrics()
    assert value(text, "dualpool_requests_total", model_group="llama") == before + 10
    up = samples(text, "dualpool_state_backend_up", backend="redis")
    assert up and all(v == 1.0 for _, v in up) and all("pid=" not in labels for labels, _ in up)
    ratio = samples(text, "dualpool_learned_bytes_per_token", category="prose")
    assert len(ratio) == 1 and "pid=" not in ratio[0][0]  # most recent write, not one per worker
    in_flight = samples(text, "dualpool_in_flight_requests", pool="short")
    assert in_flight and all("pid=" not in labels for labels, _ in in_flight)


def test_a_restarted_proxy_keeps_the_learned_ratios(fleet: Fleet) -> None:
    # Earlier tests' traffic may still be in flight between workers: wait until all agree.
    eventually(lambda: len(fleet.budgets(fleet.a, repeat=4) | fleet.budgets(fleet.b)) == 1)
    (shared,) = fleet.budgets(fleet.b)
    assert fleet.cold is not None and shared != fleet.cold
    fleet.b.restart()
    assert fleet.budgets(fleet.b) == {shared}  # restored before its first request
