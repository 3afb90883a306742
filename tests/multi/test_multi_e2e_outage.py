"""A real proxy whose Redis (a redis-server of this test's own) stops mid-run: no request is lost,
learning continues locally with the outage visible on /metrics, and once Redis is back the proxy
republishes what it learned and checkpoints it, so a fresh worker restores the same state."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from poison import honest_text
from proxies import Proxy, backends, proxy_config, running, value
from redis_helpers import PrivateRedis, private_redis
from tenant_auth import TENANTS

from litellm_dualpool.core.calibration import Calibrator
from litellm_dualpool.core.estimator import Estimator
from litellm_dualpool.state import StateConfig, build_store
from tests.e2e.plugin_stack import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

OPS = next(k for k, v in TENANTS.items() if v["key_alias"] == "ops")
PROBE = next(k for k, v in TENANTS.items() if v["key_alias"] == "probe")
PREFIX = "outage"


@dataclass
class Stack:
    proxy: Proxy
    redis: PrivateRedis




@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("outage")
    with private_redis(root) as redis_server, backends(root, ("short", 4096),
                                                        ("long", 16384)) as pools:
        settings = {"state": {"backend": "redis", "key_prefix": PREFIX,
                              "redis": {"url": redis_server.url},
                              "sync_interval_seconds": 0.2, "snapshot_interval_seconds": 1.0,
                              "operation_timeout_seconds": 0.3, "retry_max_seconds": 1.0}}
        with running(Proxy("c", proxy_config("llama", pools, settings), root / "c")) as (proxy,):
            yield Stack(proxy, redis_server)


def test_redis_stopped_mid_run_loses_no_request_and_recovers(stack: Stack) -> None:
    proxy, server = stack.proxy, stack.redis
    rng = random.Random(4)

    def send(count: int) -> None:
        for _ in range(count):
            response = proxy.chat(OPS, honest_text(rng, rng.randint(500, 5000)), max_tokens=8)
            assert response.status_code == 200, response.text

    send(10)
    eventually(lambda: server.client().xlen(f"{PREFIX}:observations") >= 10)
    server.stop()
    learned_before = value(proxy.metrics(), "dualpool_learning_samples_total", outcome="learned")
    send(20)  # every request is served while Redis is gone
    metrics = proxy.metrics()
    eventually(lambda: value(proxy.metrics(), "dualpool_state_backend_up", backend="redis") == 0)
    assert value(metrics, "dualpool_state_sync_errors_total") >= 1
    # Learning went on locally during the outage.
    assert value(metrics, "dualpool_learning_samples_total", outcome="learned") >= (
        learned_before + 20)

    server.start()  # an empty Redis: no persistence
    eventually(lambda: value(proxy.metrics(), "dualpool_state_backend_up", backend="redis") == 1)
    client = server.client()
    eventually(lambda: client.xlen(f"{PREFIX}:observations") >= 20  # republished
               and client.exists(f"{PREFIX}:snapshot") == 1)
    eventually(lambda: value(proxy.metrics(), "dualpool_state_pending_observations") == 0)

    # A fresh worker restores what the proxy learned, before and during the outage.
    def checkpointed() -> bool:
        last = client.xrevrange(f"{PREFIX}:observations", count=1)
        return bool(last) and client.hget(f"{PREFIX}:snapshot", "stream_id") == last[0][0]

    eventually(checkpointed)
    store = build_store(StateConfig.model_validate(
        {"backend": "redis", "key_prefix": PREFIX, "redis": {"url": server.url}}), Calibrator())
    assert store.restore_blocking()
    estimator = Estimator(store.calibrator)
    for text in (honest_text(random.Random(31), 1200), honest_text(random.Random(32), 9000)):
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": 16}
        # estimated as the proxy does, tiers included (its pools' limits)
        expected = estimator.estimate(body, "llama", limits=(4096, 16384)).budget.total_tokens
        assert proxy.budget(PROBE, text, max_tokens=16) == expected
