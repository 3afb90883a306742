"""Routes around the normal one, through a real proxy with tenant keys: LiteLLM's comma-separated
batch route, a model alias, and the hidden recovery group called by name. Each carries the
caller's own policy or is refused; none leaves a request in flight; a tenant whose observations
are untrusted teaches nothing on any of them; a poisoning run on them moves nobody's budget."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from poison import honest_text, low_ratio_attack
from proxies import Backend, Proxy, backends, proxy_config, running, samples, value
from tenant_auth import TENANTS

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

ALPHA, BETA, MALLORY, BATCH, PROBE = (
    next(k for k, v in TENANTS.items() if v["key_alias"] == alias)
    for alias in ("alpha", "beta", "mallory", "batch", "probe"))
SHORT_LEN, LONG_LEN = 4096, 16384
GROUP, ALIAS, RECOVERY = "llama", "llama-alias", "llama::dualpool-recovery"
#: ~6.5K real tokens of prose: only the long pool holds it.
LONG_PROSE = honest_text(random.Random(31), 30_000)
PROBES = [honest_text(random.Random(seed), size) for seed, size in ((41, 1500), (42, 6000))]


@dataclass
class Stack:
    proxy: Proxy
    short: Backend
    long: Backend

    def served(self, backend: Backend) -> int:
        return int(httpx.get(backend.url + "/stats", timeout=10).json()["served"])

    def send(self, key: str, model: str, content: str, **extra: object) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
        return httpx.post(self.proxy.url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {key}"})

    def metric(self, name: str, **labels: str) -> float:
        """A metric's value; a series that is absent fails the test (it is not a zero)."""
        text = self.proxy.metrics()
        assert samples(text, name, **labels), f"{name}{labels} is not on /metrics"
        return value(text, name, **labels)

    def budgets(self) -> tuple[int, ...]:
        """What the plugin estimates for other tenants' requests (asked by a key that teaches
        nothing)."""
        return tuple(self.proxy.budget(PROBE, text, max_tokens=16) for text in PROBES)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("routes")
    with backends(root, ("short", SHORT_LEN), ("long", LONG_LEN)) as (short, long):
        config = proxy_config(GROUP, [short, long], {"default_output_tokens": 64})
        config["router_settings"] = {"model_group_alias": {ALIAS: GROUP}}
        proxy = Proxy("routes", config, root / "proxy")
        with running(proxy):
            stack = Stack(proxy, short, long)
            # a warm key: honest traffic from two tenants
            rng = random.Random(5)
            for i in range(16):
                text = honest_text(rng, rng.randint(800, 7000))
                assert stack.send((ALPHA, BETA)[i % 2], GROUP, text,
                                  max_tokens=8).status_code == 200
            yield stack


@pytest.mark.parametrize("model", [f"{GROUP},{GROUP}", f"{GROUP}, other", f"other,{GROUP}"])
def test_a_comma_separated_list_naming_a_group_is_refused(stack: Stack, model: str) -> None:
    long_before = stack.served(stack.long)
    response = stack.send(BATCH, model, LONG_PROSE, max_tokens=8)
    assert response.status_code == 400, response.text
    assert "comma-separated" in response.text and repr(GROUP) in response.text
    assert stack.served(stack.long) == long_before


def test_a_barred_tenant_is_not_served_long_by_the_recovery_group(stack: Stack) -> None:
    long_before = stack.served(stack.long)
    for key in (BATCH, ALPHA):
        response = stack.send(key, RECOVERY, LONG_PROSE, max_tokens=8)
        assert response.status_code == 400, response.text
        assert "reserved" in response.text
        assert "dualpool-recovery" not in response.text
    assert stack.served(stack.long) == long_before
    # On the normal route the same tenant gets the plugin's own refusal.
    normal = stack.send(BATCH, GROUP, LONG_PROSE, max_tokens=8)
    assert normal.status_code == 400 and "does not allow" in normal.text


def test_an_alias_carries_the_callers_policy(stack: Stack) -> None:
    long_before = stack.served(stack.long)
    barred = stack.send(BATCH, ALIAS, LONG_PROSE, max_tokens=8)
    assert barred.status_code == 400, barred.text
    assert "does not allow" in barred.text
    assert stack.served(stack.long) == long_before
    allowed = stack.send(ALPHA, ALIAS, LONG_PROSE, max_tokens=8)
    assert allowed.status_code == 200, allowed.text
    assert stack.served(stack.long) == long_before + 1


def test_no_route_leaves_a_request_in_flight(stack: Stack) -> None:
    for i in range(20):
        stack.send(MALLORY, f"{GROUP},{GROUP}", f"tiny {i}", max_tokens=4)
        stack.send(MALLORY, RECOVERY, f"tiny {i}", max_tokens=4)
        assert stack.send(MALLORY, ALIAS, f"tiny {i}", max_tokens=4).status_code == 200
    for pool in ("short", "long"):
        assert stack.metric("dualpool_in_flight_requests", model_group=GROUP, pool=pool) == 0


def test_an_untrusted_tenant_teaches_nothing_on_any_route(stack: Stack) -> None:
    learned = stack.metric("dualpool_state_observations_total", outcome="learned")
    untrusted = value(stack.proxy.metrics(), "dualpool_state_observations_total",
                      outcome="untrusted")
    attack = low_ratio_attack(1000)
    for model in (GROUP, ALIAS):
        for _ in range(5):
            assert stack.send(PROBE, model, attack, max_tokens=8).status_code == 200
    for model in (f"{GROUP},{GROUP}", RECOVERY):
        assert stack.send(PROBE, model, attack, max_tokens=8).status_code == 400
    assert stack.metric("dualpool_state_observations_total", outcome="learned") == learned
    # each served request was judged, as the caller's policy says, and refused
    assert stack.metric("dualpool_state_observations_total",
                        outcome="untrusted") == untrusted + 10


def test_a_poisoning_run_on_the_side_routes_moves_nobodys_budget(stack: Stack) -> None:
    before = stack.budgets()
    limited = value(stack.proxy.metrics(), "dualpool_state_observations_total",
                    outcome="limited")
    attack = low_ratio_attack(1000)  # ~1.2 bytes/token, classified as prose
    for _ in range(20):
        stack.send(MALLORY, f"{GROUP},{GROUP}", attack, max_tokens=8)
        stack.send(MALLORY, RECOVERY, attack, max_tokens=8)
        assert stack.send(MALLORY, ALIAS, attack, max_tokens=8).status_code == 200
    assert stack.budgets() == before
    # the alias route's requests reached the influence guard as a `normal` tenant's
    assert stack.metric("dualpool_state_observations_total", outcome="limited") > limited
