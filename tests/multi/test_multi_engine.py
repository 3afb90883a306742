"""The plugin's engine with tenant policies and the state store (in process, no HTTP)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from litellm_dualpool.config import load_plugin_config
from litellm_dualpool.errors import PoolNotAllowedError
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy.engine import DualPoolEngine
from litellm_dualpool.state import MemoryStore, Outcome
from litellm_dualpool.tenancy import ObservationTrust, TenantPolicy

pytestmark = pytest.mark.litellm_compat

MODEL_LIST = [
    {"model_name": "llama", "litellm_params": {"model": "hosted_vllm/m", "api_base": "http://s"},
     "model_info": {"max_model_len": 4096}},
    {"model_name": "llama", "litellm_params": {"model": "hosted_vllm/m", "api_base": "http://l"},
     "model_info": {"max_model_len": 16384}},
]


def engine(settings: dict[str, object] | None = None) -> tuple[DualPoolEngine, CollectorRegistry]:
    registry = CollectorRegistry()
    config = load_plugin_config({"model_list": MODEL_LIST, "dualpool_settings": settings or {},
                                 "router_settings": {"redis_host": "10.1.2.3"}})
    return DualPoolEngine(config, metrics=DualPoolMetrics(registry)), registry


def body(text: str = "Explain the pool routing briefly.", **extra: object) -> dict[str, object]:
    return {"model": "llama", "messages": [{"role": "user", "content": text}], **extra}


def test_plan_carries_the_tenant_and_applies_its_fixed_category_and_budget() -> None:
    eng, _ = engine()
    policy = TenantPolicy(category="acme", default_output_tokens=100, tenant="tabc",
                          observation_trust=ObservationTrust.NORMAL)
    stash = eng.plan(body(), eng.groups["llama"], policy,
                     metadata={"dualpool": {"category": "other"}})
    assert stash.plan.category == "acme"  # the request may not change a fixed category
    assert stash.plan.budget.output_tokens == 100
    assert (stash.plan.tenant, stash.plan.trust) == ("tabc", "normal")


def test_no_long_pool_refuses_what_only_fits_long_with_a_clear_message() -> None:
    eng, registry = engine()
    policy = TenantPolicy(allow_long_pool=False)
    assert eng.plan(body(max_tokens=64), eng.groups["llama"], policy).progress.pool == "short"
    with pytest.raises(PoolNotAllowedError) as caught:
        eng.plan(body(max_tokens=8000), eng.groups["llama"], policy)
    assert "does not allow" in str(caught.value) and "4096" in str(caught.value)
    assert registry.get_sample_value("dualpool_refusals_total",
                                     {"model_group": "llama", "reason": "not_allowed"}) == 1


def test_learning_goes_through_the_store_with_the_tenants_trust() -> None:
    eng, registry = engine()
    assert isinstance(eng.store, MemoryStore) and eng.store.calibrator is eng.calibrator
    group = eng.groups["llama"]
    trusted = eng.plan(body(), group, TenantPolicy())
    assert eng.learn(trusted, 20) is True
    untrusted = eng.plan(body(), group, TenantPolicy(observation_trust=ObservationTrust.NONE,
                                                     tenant="tpub"))
    assert eng.learn(untrusted, 20) is False
    assert registry.get_sample_value("dualpool_learning_samples_total", {
        "model_group": "llama", "outcome": Outcome.UNTRUSTED.value}) == 1
    assert registry.get_sample_value("dualpool_learning_samples_total", {
        "model_group": "llama", "outcome": "learned"}) == 1


def test_state_settings_are_validated_and_inherit_router_redis() -> None:
    from litellm_dualpool.errors import ConfigError
    from litellm_dualpool.state.settings import redis_settings

    config = load_plugin_config({"model_list": MODEL_LIST,
                                 "router_settings": {"redis_host": "10.1.2.3"},
                                 "dualpool_settings": {"state": {"backend": "redis"}}})
    assert redis_settings(config.settings.state, config.router_settings).host == "10.1.2.3"
    with pytest.raises(ConfigError, match=r"dualpool_settings\.state\.backend"):
        load_plugin_config({"model_list": MODEL_LIST,
                            "dualpool_settings": {"state": {"backend": "etcd"}}})
    with pytest.raises(ConfigError, match=r"dualpool_settings\.tenancy\.default_policy"):
        load_plugin_config({"model_list": MODEL_LIST, "dualpool_settings": {
            "tenancy": {"default_policy": {"allow_long_pool": "no"}}}})
