"""The simulator runs the router the proxy deploys: for the same request, learned state and pool
snapshots, the proxy's engine and the simulator's PolicyRouter reach the same decision."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from litellm_dualpool.config import PoolSpec, load_plugin_config
from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.policy import Decision, PoolState, Reason
from litellm_dualpool.core.shape import shape_request
from litellm_dualpool.errors import NoPoolFitsError
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy.engine import DualPoolEngine
from litellm_dualpool.sim.routers import PolicyRouter, SimRequest
from litellm_dualpool.tenancy import TenantPolicy

pytestmark = pytest.mark.litellm_compat

WORDS = ("pool", "token", "route", "def f(x):", "return", "数据", "{\"k\": 1}", "the", "1234")


def engine_for(limits: list[int], loads: dict[str, float], calibrator: Calibrator,
               headroom: float) -> DualPoolEngine:
    model_list = [{"model_name": "g", "litellm_params": {"model": "hosted_vllm/m",
                                                          "api_base": f"http://p{i}"},
                   "model_info": {"max_model_len": limit, "pool": f"p{i}"}}
                  for i, limit in enumerate(limits)]
    config = load_plugin_config({"model_list": model_list,
                                 "dualpool_settings": {"headroom_fraction": headroom}})

    def load(group: str, pool: PoolSpec) -> float | None:
        return loads.get(pool.name)

    return DualPoolEngine(config, metrics=DualPoolMetrics(CollectorRegistry()),
                          calibrator=calibrator, load_source=load)


def warm(calibrator: Calibrator, rng: random.Random) -> None:
    for _ in range(rng.randint(0, 40)):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 400)))
        body = {"messages": [{"role": "user", "content": text}]}
        shape = shape_request(body)
        key = CategoryKey("g", shape.content_class.value)
        calibrator.observe(key, shape, max(1, int(len(text.encode()) / rng.uniform(2.5, 5.0))))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6),
       limits=st.lists(st.integers(512, 65536), min_size=2, max_size=3, unique=True),
       loads=st.lists(st.floats(0.0, 1.5), min_size=3, max_size=3),
       headroom=st.sampled_from([0.0, 0.05, 0.2]),
       words=st.integers(1, 6000), max_tokens=st.one_of(st.none(), st.integers(0, 70000)))
def test_the_simulator_and_the_proxy_decide_alike(
        seed: int, limits: list[int], loads: list[float], headroom: float, words: int,
        max_tokens: int | None) -> None:
    rng = random.Random(seed)
    calibrator = Calibrator()
    warm(calibrator, rng)
    pool_loads = {f"p{i}": loads[i] for i in range(len(limits))}
    engine = engine_for(limits, pool_loads, calibrator, headroom)
    body: dict[str, object] = {"messages": [{"role": "user", "content": " ".join(
        rng.choice(WORDS) for _ in range(words))}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    group = engine.groups["g"]
    try:
        record = engine.plan(body, group, TenantPolicy())
        proxy: Decision = record.plan.decision
    except NoPoolFitsError as refusal:
        proxy = Decision(None, Reason.FITS_NOWHERE, refusal.budget_tokens, 0)
    shape = shape_request(body)
    router = PolicyRouter(engine.settings.policy_settings(), calibrator=calibrator,
                          model_group="g")
    output = engine.settings.default_output_tokens if max_tokens is None else max_tokens
    request = SimRequest(0, shape, shape.content_class.value, output, true_prompt_tokens=1)
    states = [PoolState(p.name, p.max_model_len, pool_loads[p.name]) for p in group.pools]
    sim = router.choose(request, states)
    assert (sim.pool, sim.reason, sim.budget_tokens) == (proxy.pool, proxy.reason,
                                                         proxy.budget_tokens)
