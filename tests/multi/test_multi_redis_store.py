"""The Redis state store against real Redis: sharing, restart, outage and recovery."""

from __future__ import annotations

import json

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis_helpers import SHARED_HOST, SHARED_PORT, PrivateRedis, wait_for

from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.shape import ContentClass, RequestShape
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.state import InfluenceGuard, Learner, MemoryStore, Outcome, StateConfig
from litellm_dualpool.state import build_store as build
from litellm_dualpool.state.redis_store import RedisStore
from litellm_dualpool.state.settings import RedisStateSettings, redis_settings
from litellm_dualpool.tenancy import ObservationTrust
from tests.prometheus_text import registry_value

KEY = CategoryKey("llama", "code")


def shape(text_bytes: int) -> RequestShape:
    return RequestShape(text_bytes, 0, 1, 0, 0, 0, None, ContentClass.CODE)


def make_store(prefix: str, *, port: int = SHARED_PORT,
               **overrides: float) -> tuple[RedisStore, DualPoolMetrics]:
    metrics = DualPoolMetrics(CollectorRegistry())
    settings = RedisStateSettings(host=SHARED_HOST, port=port, key_prefix=prefix,
                                  operation_timeout_seconds=0.5, sync_interval_seconds=0.05,
                                  retry_max_seconds=0.2, **overrides)  # type: ignore[arg-type]
    return RedisStore(Learner(Calibrator()), settings, metrics=metrics), metrics


def feed(store: RedisStore, count: int, *, bytes_per_token: float = 3.0, start: int = 0) -> None:
    for i in range(start, start + count):
        text = 2000 + 37 * i
        store.observe(KEY, shape(text), round(text / bytes_per_token) + 10)


def state_of(store: RedisStore) -> object:
    snap = store.learner.snapshot()
    return snap["calibration"]["keys"], snap["guard"]


def sample(metrics: DualPoolMetrics, name: str, **labels: str) -> float:
    return registry_value(metrics.registry, name, **labels)


async def test_two_workers_converge_to_the_same_state(prefix: str) -> None:
    a, metrics_a = make_store(prefix)
    b, _ = make_store(prefix)
    assert a.restore_blocking() and b.restore_blocking()
    feed(a, 30)
    assert a.calibrator.ratio(KEY).samples == 0  # queued, not learned before it is shared
    await a.sync_once()
    await b.sync_once()
    assert a.calibrator.ratio(KEY).samples == 30
    assert abs(a.calibrator.ratio(KEY).bytes_per_token - 3.0) < 0.1
    assert state_of(a) == state_of(b)  # same log, same rules: the same state
    feed(b, 10, start=30)
    await b.sync_once()
    await a.sync_once()
    assert state_of(a) == state_of(b)
    assert a.calibrator.ratio(KEY).samples == 40
    assert sample(metrics_a, "dualpool_learning_samples_total", model_group="llama",
                  outcome="learned") == 30  # only its own observations count as its learning
    assert sample(metrics_a, "dualpool_state_observations_total", origin="remote",
                  outcome="learned") == 10
    await a.stop()
    await b.stop()


async def test_a_restarted_worker_restores_the_snapshot_and_replays_the_rest(prefix: str) -> None:
    a, _ = make_store(prefix)
    a.restore_blocking()
    feed(a, 25)
    await a.sync_once()
    assert await a.checkpoint()
    assert not await a.checkpoint()  # nothing new: not rewritten
    client = redis.Redis(host=SHARED_HOST, port=SHARED_PORT)
    assert client.hget(f"{prefix}:snapshot", "stream_id").decode() == a.last_id
    feed(a, 5, start=25)
    await a.sync_once()  # these five are only in the stream
    restarted, _ = make_store(prefix)
    assert restarted.restore_blocking()
    assert restarted.last_id == a.last_id
    assert restarted.calibrator.ratio(KEY).samples == 30
    assert state_of(restarted) == state_of(a)
    await a.stop()
    await restarted.stop()
    client.close()


async def test_an_older_snapshot_never_overwrites_a_newer_one(prefix: str) -> None:
    ahead, _ = make_store(prefix)
    behind, _ = make_store(prefix)
    ahead.restore_blocking()
    behind.restore_blocking()
    feed(ahead, 10)
    await ahead.sync_once()
    await behind.sync_once()
    feed(ahead, 10, start=10)
    await ahead.sync_once()
    assert await ahead.checkpoint()
    assert not await behind.checkpoint()  # its stream position is older
    fresh, _ = make_store(prefix)
    fresh.restore_blocking()
    assert fresh.last_id == ahead.last_id
    for store in (ahead, behind, fresh):
        await store.stop()


async def test_unreadable_entries_are_skipped_and_counted(prefix: str) -> None:
    client = redis.Redis(host=SHARED_HOST, port=SHARED_PORT)
    client.xadd(f"{prefix}:observations", {"o": "not an observation"})
    client.xadd(f"{prefix}:observations", {"o": json.dumps([9, "future"])})
    store, metrics = make_store(prefix)
    assert store.restore_blocking()
    feed(store, 3)
    await store.sync_once()
    assert store.calibrator.ratio(KEY).samples == 3
    assert sample(metrics, "dualpool_state_sync_errors_total", operation="decode") == 2
    await store.stop()
    client.close()


async def test_redis_down_then_back_learns_locally_then_shares(own_redis: PrivateRedis) -> None:
    store, metrics = make_store("outage", port=own_redis.port)
    assert store.restore_blocking()
    await store.start()
    feed(store, 10)
    await wait_for(lambda: store.calibrator.ratio(KEY).samples == 10)
    own_redis.stop()
    feed(store, 5, start=10)  # learned at once or once the loop notices: never lost
    await wait_for(lambda: not store.up)
    assert sample(metrics, "dualpool_state_backend_up", backend="redis") == 0
    assert sum(sample(metrics, "dualpool_state_sync_errors_total", operation=op)
               for op in ("publish", "read", "snapshot")) >= 1
    outcome = store.observe(KEY, shape(9000), 3010)
    assert outcome is Outcome.LEARNED  # while down, learned on the spot
    assert store.calibrator.ratio(KEY).samples == 16
    assert store.pending >= 6
    own_redis.start()  # an empty Redis (no persistence): the worker republishes what it learned
    await wait_for(lambda: store.up and store.pending == 0)
    assert sample(metrics, "dualpool_state_backend_up", backend="redis") == 1
    assert store.calibrator.ratio(KEY).samples == 16  # its own entries are not learned twice
    other, _ = make_store("outage", port=own_redis.port)
    assert other.restore_blocking()
    assert other.calibrator.ratio(KEY).samples == 6  # what was published after the restart
    await store.stop()
    await other.stop()


async def test_redis_too_slow_counts_as_down_and_recovers(own_redis: PrivateRedis) -> None:
    store, _ = make_store("slow", port=own_redis.port)
    assert store.restore_blocking()
    await store.start()
    pauser = own_redis.client()
    pauser.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    await wait_for(lambda: not store.up)
    assert store.observe(KEY, shape(3000), 1010) is Outcome.LEARNED
    await wait_for(lambda: store.up and store.pending == 0)
    assert own_redis.client().xlen("slow:observations") == 1
    await store.stop()
    pauser.close()


async def test_a_worker_starting_while_redis_is_down_catches_up_later(
        own_redis: PrivateRedis) -> None:
    seeded, _ = make_store("late", port=own_redis.port)
    seeded.restore_blocking()
    feed(seeded, 20)
    await seeded.sync_once()
    await seeded.checkpoint()
    own_redis.stop()
    late, _ = make_store("late", port=own_redis.port)
    assert not late.restore_blocking()
    assert late.calibrator.ratio(KEY).samples == 0
    await late.start()
    late.observe(KEY, shape(5000), 1700)
    assert late.calibrator.ratio(KEY).samples == 1  # local learning meanwhile
    own_redis.start()
    client = own_redis.client()
    client.hset("late:snapshot", mapping={  # an empty Redis again; give it back a snapshot
        "stream_id": "1-0", "state": json.dumps({"learner": seeded.learner.snapshot(),
                                                  "origins": {}})})
    await wait_for(lambda: late.up and late.pending == 0
                   and late.calibrator.ratio(KEY).samples == 21)
    await late.stop()
    await seeded.stop()


async def test_pending_overflow_drops_the_oldest_and_counts_it(own_redis: PrivateRedis) -> None:
    store, metrics = make_store("overflow", port=own_redis.port, max_pending_observations=3)
    own_redis.stop()
    assert not store.restore_blocking()
    feed(store, 5)
    assert store.pending == 3
    assert sample(metrics, "dualpool_state_dropped_observations_total") == 2
    assert store.calibrator.ratio(KEY).samples == 5  # dropped from sharing, not from learning


def test_build_store_and_connection_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calibrator = Calibrator()
    assert isinstance(build(StateConfig(), calibrator), MemoryStore)
    config = StateConfig.model_validate({"backend": "redis", "key_prefix": "fleet-a"})
    store = build(config, calibrator, router_settings={"redis_host": "10.0.0.5",
                                                       "redis_port": "6380"})
    assert isinstance(store, RedisStore) and store.calibrator is calibrator
    assert (store.settings.host, store.settings.port) == ("10.0.0.5", 6380)
    assert store.stream_key == "fleet-a:observations"
    monkeypatch.setenv("DP_REDIS_PASSWORD", "s3cret")
    explicit = StateConfig.model_validate({"backend": "redis", "redis": {
        "host": "r1", "password": "os.environ/DP_REDIS_PASSWORD"}})
    resolved = redis_settings(explicit, {"redis_host": "ignored", "redis_port": 7000}, {})
    assert (resolved.host, resolved.port, resolved.password) == ("r1", 7000, "s3cret")
    assert redis_settings(StateConfig(), None, {"REDIS_HOST": "envhost"}).host == "envhost"
    from litellm_dualpool.errors import ConfigError

    with pytest.raises(ConfigError, match=r"router_settings\.redis_password"):
        redis_settings(StateConfig(), {"redis_password": "os.environ/DP_UNSET_VARIABLE"}, {})


def test_memory_store_learns_at_once_through_the_guard() -> None:
    metrics = DualPoolMetrics(CollectorRegistry())
    store = MemoryStore(Learner(Calibrator(), InfluenceGuard()), metrics=metrics)
    assert store.observe(KEY, shape(3000), 1010) is Outcome.LEARNED
    assert store.observe(KEY, shape(3000), 1010, tenant="t",
                         trust=ObservationTrust.NONE) is Outcome.UNTRUSTED
    assert sample(metrics, "dualpool_state_backend_up", backend="memory") == 1
    assert sample(metrics, "dualpool_learned_bytes_per_token", model_group="llama",
                  category="code") > 0
