"""The per-request caches of the hot path (bench/profile_plugin.py) change no result: metric
children handed out again are the registered ones, and a cached tenant policy is the one the
uncached path resolves, per config."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.tenancy import (
    PolicySpec,
    TenancyConfig,
    TenantPolicyError,
    _resolve,
    resolve_tenant_policy,
    tenant_of,
)


def test_cached_metric_children_count_in_the_registry() -> None:
    registry = CollectorRegistry()
    metrics = DualPoolMetrics(registry)
    first = metrics.requests.labels("g", "short", "fits")
    assert metrics.requests.labels("g", "short", "fits") is first
    for _ in range(3):
        metrics.requests.labels("g", "short", "fits").inc()
    metrics.requests.labels(model_group="g", pool="long", reason="fits").inc()
    assert registry.get_sample_value("dualpool_requests_total",
                                     {"model_group": "g", "pool": "short", "reason": "fits"}) == 3
    assert registry.get_sample_value("dualpool_requests_total",
                                     {"model_group": "g", "pool": "long", "reason": "fits"}) == 1
    metrics.requests.remove("g", "short", "fits")
    metrics.requests.labels("g", "short", "fits").inc()  # a fresh child after remove()
    assert registry.get_sample_value("dualpool_requests_total",
                                     {"model_group": "g", "pool": "short", "reason": "fits"}) == 1


def test_cached_policy_is_the_uncached_one_per_config() -> None:
    user = {"token": "hashed-key-1", "metadata": {}, "team_metadata": None}
    plain, strict = TenancyConfig(), TenancyConfig(default_policy=PolicySpec(
        allow_long_pool=False, default_output_tokens=77))
    for tenancy in (plain, strict, plain):
        for flags in ((False, True), (True, False)):
            got = resolve_tenant_policy(user, tenancy, allow_force_pool=flags[0],
                                        allow_category=flags[1])
            assert got == _resolve(tenant_of(user), False, tenancy, [], *flags)
    assert resolve_tenant_policy(user, strict, allow_force_pool=False,
                                 allow_category=True).default_output_tokens == 77
    assert resolve_tenant_policy(user, plain, allow_force_pool=False,
                                 allow_category=True).default_output_tokens is None


def test_policy_entries_are_read_on_every_request() -> None:
    tenancy = TenancyConfig()
    user = {"token": "hashed-key-2", "metadata": {"dualpool_policy": {"category": "code"}}}
    assert resolve_tenant_policy(user, tenancy, allow_force_pool=False,
                                 allow_category=True).category == "code"
    user["metadata"]["dualpool_policy"] = {"category": "prose"}
    assert resolve_tenant_policy(user, tenancy, allow_force_pool=False,
                                 allow_category=True).category == "prose"
    user["metadata"]["dualpool_policy"] = {"category": 5}
    with pytest.raises(TenantPolicyError, match="category"):
        resolve_tenant_policy(user, tenancy, allow_force_pool=False, allow_category=True)
