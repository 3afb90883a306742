"""In-process checks of the plugin behaviours the reliability suite needed (real engine, no
proxy): retries avoid deployments that failed the request, a failed request closes its
in-flight count, metric labels use the calibrator's bounded key, and secrets come only from
the environment."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from litellm_dualpool.config import load_plugin_config
from litellm_dualpool.core.calibration import OVERFLOW_CATEGORY, CalibrationSettings, Calibrator
from litellm_dualpool.core.estimator import category_key
from litellm_dualpool.core.shape import shape_request
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy.callback import failed_deployment_ids
from litellm_dualpool.proxy.engine import DualPoolEngine
from litellm_dualpool.proxy.policy import TenantPolicy
from litellm_dualpool.proxy.record import PlanRecord
from tests.prometheus_text import registry_value

pytestmark = [pytest.mark.litellm_compat]


def model_list() -> list[dict[str, Any]]:
    def dep(i: str, length: int) -> dict[str, Any]:
        return {"model_name": "g", "litellm_params": {"model": "hosted_vllm/m",
                                                     "api_base": f"http://{i}.test/v1"},
                "model_info": {"id": i, "max_model_len": length}}
    return [dep("s1", 4096), dep("s2", 4096), dep("l1", 32768)]


def engine() -> tuple[DualPoolEngine, CollectorRegistry]:
    registry = CollectorRegistry()
    config = load_plugin_config({"model_list": model_list(),
                                 "dualpool_settings": {"calibration": {"max_keys": 2}}})
    return DualPoolEngine(config, metrics=DualPoolMetrics(registry)), registry


def plan(eng: DualPoolEngine, content: str, **meta: Any) -> PlanRecord:
    body = {"model": "g", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return eng.plan(body, eng.groups["g"], TenantPolicy(allow_category=True), metadata=meta)


def ids(deployments: list[dict[str, Any]]) -> list[str]:
    return [d["model_info"]["id"] for d in deployments]


def test_retry_breadcrumbs_name_the_failed_deployments() -> None:
    crumbs = [{"deployment_id": "s1", "exception_type": "APIConnectionError"},
              {"deployment_id": None}, "junk"]
    assert failed_deployment_ids({"metadata": {"previous_models": crumbs}}) == {"s1"}
    assert failed_deployment_ids({"litellm_metadata": {"previous_models": crumbs}}) == {"s1"}
    assert failed_deployment_ids({"metadata": {}}) == frozenset()
    assert failed_deployment_ids(None) == frozenset()


def test_a_retry_avoids_failed_deployments_and_spills_only_to_what_fits() -> None:
    eng, _ = engine()
    healthy = model_list()
    short = plan(eng, "hello")
    assert ids(eng.choose("g", healthy, short)) == ["s1", "s2"]
    assert ids(eng.choose("g", healthy, short, frozenset({"s1"}))) == ["s2"]
    # The whole short pool failed this request: the long pool (always safe) serves the retry.
    assert ids(eng.choose("g", healthy, short, frozenset({"s1", "s2"}))) == ["l1"]
    assert short.progress.pool == "long" and short.progress.reason == "spillover"
    # A long request whose only long deployment failed is retried there, never sent short.
    long = plan(eng, "word " * 8000)
    assert ids(eng.choose("g", healthy, long, frozenset({"l1"}))) == ["l1"]


def test_a_retry_in_the_same_pool_is_not_another_routing_decision() -> None:
    eng, registry = engine()

    def count(metric: str, **labels: str) -> float:
        return registry_value(registry, metric, model_group="g", **labels)

    long = plan(eng, "word " * 8000)
    eng.choose("g", model_list(), long)
    eng.choose("g", model_list(), long, frozenset({"l1"}))  # the one long deployment, again
    assert count("dualpool_requests_total", pool="long", reason="fits") == 1
    assert count("dualpool_retries_total", pool="long") == 1
    # A retry that moves the request to another pool is a hop, not a new decision: the request
    # stays counted once (its first decision) and the hop is a failover.
    short = plan(eng, "hello")
    eng.choose("g", model_list(), short)
    eng.choose("g", model_list(), short, frozenset({"s1"}))
    eng.choose("g", model_list(), short, frozenset({"s1", "s2"}))
    eng.choose("g", model_list(), short, frozenset({"s1", "s2", "l1"}))  # l1 again: a retry
    assert count("dualpool_requests_total", pool="short", reason="fits") == 1
    assert count("dualpool_retries_total", pool="short") == 1
    assert count("dualpool_failovers_total", from_pool="short", to_pool="long") == 1
    assert count("dualpool_retries_total", pool="long") == 2
    assert count("dualpool_requests_total", pool="long", reason="spillover") == 0
    assert count("dualpool_spillovers_total", from_pool="short", to_pool="long") == 0
    total = sum(s.value for m in registry.collect() if m.name == "dualpool_requests"
                for s in m.samples if s.name == "dualpool_requests_total")
    assert total == 2  # two requests, two decisions, whatever their hops


def test_a_failed_request_closes_every_open_attempt() -> None:
    eng, registry = engine()
    stash = plan(eng, "hello")
    for _ in range(3):  # three attempts whose failure events never came
        eng.choose("g", model_list(), stash)
    assert eng.inflight.pool("g", "short") == 3
    eng.close_request(stash)
    assert eng.inflight.requests() == 0
    value = registry.get_sample_value("dualpool_in_flight_requests",
                                      {"model_group": "g", "pool": "short"})
    assert value == 0


def test_categories_beyond_max_keys_share_a_bounded_key_in_metrics() -> None:
    eng, registry = engine()
    for i in range(20):
        stash = plan(eng, f"some ordinary english text number {i} " * 4, dualpool={"category": f"c{i}"})
        eng.choose("g", model_list(), stash)
        eng.on_success(stash, {"id": "s1", "max_model_len": 4096}, 40 + i)
    labels = {s.labels["category"] for m in registry.collect() for s in m.samples
              if s.name == "dualpool_learned_bytes_per_token"}
    errors = {s.labels["category"] for m in registry.collect() for s in m.samples
              if s.name == "dualpool_prompt_tokens_estimate_error_ratio_count"}
    assert labels and errors
    assert len(labels) <= 3 and len(errors) <= 3  # max_keys + the overflow key


def test_stored_key_is_the_key_an_observation_lands_in() -> None:
    calibrator = Calibrator(CalibrationSettings(max_keys=1))
    shape = shape_request({"messages": [{"role": "user", "content": "plain words " * 20}]})
    first, second = category_key("g", shape, "a"), category_key("g", shape, "b")
    assert calibrator.stored_key(first, shape) == first
    assert calibrator.observe(first, shape, 60)
    assert calibrator.stored_key(first, shape) == first
    assert calibrator.stored_key(second, shape).category == OVERFLOW_CATEGORY
    assert calibrator.observe(second, shape, 60)
    assert set(calibrator.keys()) == {first, calibrator.stored_key(second, shape)}


@pytest.mark.parametrize("redis", [
    {"password": "hunter2"},
    {"url": "redis://:hunter2@127.0.0.1:6379/0"},
    {"url": "redis://user:hunter2@127.0.0.1:6379/0"},
])
def test_secrets_in_the_yaml_are_refused(redis: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="environment") as info:
        load_plugin_config({"model_list": model_list(),
                            "dualpool_settings": {"state": {"backend": "redis", "redis": redis}}})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("redis", [
    {"password": "os.environ/DUALPOOL_TEST_REDIS_PASSWORD"},
    {"url": "os.environ/DUALPOOL_TEST_REDIS_URL"},
    {"url": "redis://127.0.0.1:6379/0"},
])
def test_secrets_from_the_environment_are_accepted(redis: dict[str, Any]) -> None:
    config = load_plugin_config({"model_list": model_list(), "dualpool_settings": {
        "state": {"backend": "redis", "redis": redis}}})
    assert config.settings.state.redis.model_dump(exclude_none=True) == {**redis, "db": 0}
