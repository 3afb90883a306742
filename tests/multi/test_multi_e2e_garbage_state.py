"""A real proxy started on a Redis key prefix full of garbage (a snapshot with a 401-digit scale
and its origins as a list, stream entries with a 401-digit prompt_tokens, deep nesting, NaN and
bytes that are not JSON) becomes healthy, routes with the plugin, and shows what it skipped on
/metrics and in its log. Before, such a snapshot failed the proxy's start-up."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from poison import honest_text
from proxies import Proxy, backends, proxy_config, running, samples, value
from redis_helpers import SHARED_HOST, SHARED_PORT, shared_prefix
from tenant_auth import TENANTS

from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.shape import shape_request
from litellm_dualpool.state import InfluenceGuard, Learner, Observation
from litellm_dualpool.state.observation import encode
from litellm_dualpool.tenancy import ObservationTrust
from tests.e2e.plugin_stack import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

OPS = next(k for k, v in TENANTS.items() if v["key_alias"] == "ops")
ERRORS = "dualpool_state_sync_errors_total"


def garbage_snapshot() -> dict[str, str]:
    """A snapshot of real learned state, broken the two ways that stopped proxies from starting."""
    learner = Learner(Calibrator(), InfluenceGuard())
    text = honest_text(random.Random(5), 3000)
    learner.calibrator.observe(CategoryKey("llama", "prose"),
                               shape_request({"messages": [{"role": "user", "content": text}]}),
                               700)
    state = learner.snapshot()
    state["calibration"]["keys"][0]["scale"] = 10**400
    now_ms = int(time.time() * 1000)
    return {"stream_id": f"{now_ms}-0",
            "state": json.dumps({"learner": state, "origins": ["w1", 4]})}


def garbage_entries() -> list[str | bytes]:
    obs = Observation(CategoryKey("llama", "prose"),
                      shape_request({"messages": [{"role": "user", "content": "hi " * 300}]}),
                      10**400, "t", ObservationTrust.TRUSTED, "garbage", 1,
                      int(time.time() * 1000))
    huge = encode(obs)
    assert str(10**400) in huge  # the wire form carries the 401-digit count as is
    nan = huge.replace(str(10**400), "NaN")
    return [huge, "[" * 5000 + "]" * 5000, b"\xff\xfe not json", nan]


@dataclass
class Stack:
    proxy: Proxy
    prefix: str
    client: redis.Redis


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("garbage")
    client = redis.Redis(host=SHARED_HOST, port=SHARED_PORT)
    with shared_prefix("e2e-garbage") as prefix, backends(root, ("short", 4096),
                                                          ("long", 16384)) as pools:
        client.hset(f"{prefix}:snapshot", mapping=garbage_snapshot())
        for entry in garbage_entries():
            client.xadd(f"{prefix}:observations", {"o": entry})
        settings = {"state": {"backend": "redis", "key_prefix": prefix,
                              "redis": {"host": SHARED_HOST, "port": SHARED_PORT},
                              "sync_interval_seconds": 0.2, "snapshot_interval_seconds": 1.0}}
        proxy = Proxy("g", proxy_config("llama", pools, settings), root / "g")
        with running(proxy):
            yield Stack(proxy, prefix, client)
    client.close()


def test_a_proxy_starts_on_garbage_state_and_routes(stack: Stack) -> None:
    proxy = stack.proxy
    response = proxy.chat(OPS, "Summarise pool routing in one sentence.", max_tokens=16)
    assert response.status_code == 200, response.text
    assert response.headers["x-dualpool-pool"] == "short"
    assert 0 < int(response.headers["x-dualpool-budget-tokens"]) < 4096
    metrics = proxy.metrics()
    decode = samples(metrics, ERRORS, operation="decode")
    restore = samples(metrics, ERRORS, operation="restore")
    assert decode and restore, "the sync-error series are absent from /metrics"
    assert value(metrics, ERRORS, operation="decode") >= len(garbage_entries())
    assert value(metrics, ERRORS, operation="restore") >= 1
    log = proxy.log.read_text(errors="replace")
    assert "ignoring the state snapshot" in log
    assert "skipping unusable stream entry" in log
    assert "Application startup failed" not in log


def test_garbage_written_while_it_runs_is_skipped_and_counted(stack: Stack) -> None:
    proxy = stack.proxy
    before = value(proxy.metrics(), ERRORS, operation="decode")
    assert samples(proxy.metrics(), ERRORS, operation="decode"), "series absent"
    stack.client.xadd(f"{stack.prefix}:observations", {"o": garbage_entries()[0]})
    eventually(lambda: value(proxy.metrics(), ERRORS, operation="decode") == before + 1)
    text = honest_text(random.Random(9), 2500)
    assert proxy.chat(OPS, text, max_tokens=8).status_code == 200
    # Its own observation went through the same stream, was learned, and the next snapshot
    # replaced the garbage one.
    eventually(lambda: value(proxy.metrics(), "dualpool_state_observations_total",
                             origin="local", outcome="learned") >= 1)

    def snapshot_replaced() -> bool:
        state = stack.client.hget(f"{stack.prefix}:snapshot", "state")
        return state is not None and isinstance(json.loads(state).get("origins"), dict)

    eventually(snapshot_replaced)
