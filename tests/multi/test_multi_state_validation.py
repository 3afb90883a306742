"""Garbage in Redis never stops a worker: corrupted snapshots and stream entries on the machine's
Redis (a key prefix of each test's own) are skipped, counted and logged once, the worker starts
from the stream or cold, out-of-range values are clamped, and a later valid snapshot heals it."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis_helpers import SHARED_HOST, SHARED_PORT, wait_for

from litellm_dualpool.core.calibration import MAX_PROMPT_TOKENS, Calibrator, CategoryKey
from litellm_dualpool.core.shape import ContentClass, RequestShape
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.state import InfluenceGuard, Learner, Outcome
from litellm_dualpool.state.observation import Observation, decode, encode
from litellm_dualpool.state.redis_store import MAX_CLOCK_SKEW_MS, RedisStore
from litellm_dualpool.state.settings import RedisStateSettings
from litellm_dualpool.tenancy import ObservationTrust

KEY = CategoryKey("llama", "code")
HONEST = 12
ERRORS = "dualpool_state_sync_errors_total"
YEAR_MS = 365 * 24 * 3600 * 1000


def shape(text_bytes: int) -> RequestShape:
    return RequestShape(text_bytes, 0, 1, 0, 0, 0, None, ContentClass.CODE)


def make_store(prefix: str) -> tuple[RedisStore, DualPoolMetrics]:
    metrics = DualPoolMetrics(CollectorRegistry())
    settings = RedisStateSettings(host=SHARED_HOST, port=SHARED_PORT, key_prefix=prefix,
                                  operation_timeout_seconds=0.5, sync_interval_seconds=0.05,
                                  retry_max_seconds=0.2)
    return RedisStore(Learner(Calibrator()), settings, metrics=metrics), metrics


def feed(store: RedisStore, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        text = 2000 + 37 * i
        store.observe(KEY, shape(text), round(text / 3.0) + 10)


def errors(metrics: DualPoolMetrics, operation: str) -> float:
    """The counter's value; an absent series fails the test (it is never read as zero)."""
    value = metrics.registry.get_sample_value(ERRORS, {"operation": operation})
    assert value is not None, f"{ERRORS}{{operation={operation!r}}} is absent"
    return value


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis(host=SHARED_HOST, port=SHARED_PORT)
    yield connection
    connection.close()


async def seed(prefix: str, count: int = HONEST) -> RedisStore:
    """`count` honest observations in the stream and a valid snapshot of them."""
    writer, _ = make_store(prefix)
    assert writer.restore_blocking()
    feed(writer, count)
    await writer.sync_once()
    assert await writer.checkpoint()
    return writer


async def start(store: RedisStore, how: str) -> None:
    """Start-up through `restore_blocking` (the proxy's start) or the background sync loop
    (a worker whose blocking restore did not reach Redis); the loop is stopped once caught up,
    so that the test goes on with `sync_once` alone."""
    if how == "restore_blocking":
        assert store.restore_blocking()
        return
    await store.start()
    await wait_for(lambda: store.up and store.calibrator.ratio(KEY).samples >= HONEST)
    await store.stop()


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


# -- corrupted snapshots (finding 4) ---------------------------------------------------------
def _key(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["learner"]["calibration"]["keys"][0]


PAYLOAD_CASES: dict[str, Callable[[dict[str, Any]], None]] = {
    "origins_list": lambda p: p.update(origins=["w1", 3]),
    "origins_string": lambda p: p.update(origins="w1"),
    "huge_integer_scale": lambda p: _key(p).update(scale=10**400),
    "huge_integer_samples": lambda p: _key(p).update(samples=10**400),
    "nan_theta": lambda p: _key(p)["theta"].__setitem__(0, float("nan")),
    "infinite_dev_sum": lambda p: _key(p).update(dev_sum=float("inf")),
    "keys_wrong_type": lambda p: p["learner"]["calibration"].update(keys={"a": 1}),
    "learner_string": lambda p: p.update(learner="garbage"),
    "guard_huge_count": lambda p: p["learner"].update(guard=[{
        "model_group": "llama", "category": "code", "latest": 1,
        "buckets": [[1, {"t": 10**400}]]}]),
    "deviations_string": lambda p: p["learner"].update(deviations="up"),
}
RAW_CASES: dict[str, Callable[[dict[bytes, bytes]], None]] = {
    "not_json": lambda f: f.update({b"state": b"\xff\x00 not json"}),
    "deeply_nested": lambda f: f.update({b"state": b"[" * 100_000 + b"]" * 100_000}),
    "json_array": lambda f: f.update({b"state": b"[1, 2]"}),
    "garbage_stream_id": lambda f: f.update({b"stream_id": b"x-1"}),
    "huge_stream_id": lambda f: f.update({b"stream_id": b"9" * 401 + b"-0"}),
    "no_state_field": lambda f: f.pop(b"state"),
}


def corrupt(client: redis.Redis, prefix: str, case: str) -> None:
    key = f"{prefix}:snapshot"
    if case == "wrong_key_type":
        client.delete(key)
        client.set(key, "garbage")
        return
    fields: dict[bytes, bytes] = client.hgetall(key)
    if case in PAYLOAD_CASES:
        payload = json.loads(fields[b"state"])
        PAYLOAD_CASES[case](payload)
        fields[b"state"] = json.dumps(payload).encode()
    else:
        RAW_CASES[case](fields)
    client.delete(key)
    client.hset(key, mapping=fields)


SNAPSHOT_CASES = [*PAYLOAD_CASES, *RAW_CASES, "wrong_key_type"]


@pytest.mark.parametrize("how", ["restore_blocking", "sync_loop"])
@pytest.mark.parametrize("case", SNAPSHOT_CASES)
async def test_a_corrupted_snapshot_never_stops_a_start(
        prefix: str, client: redis.Redis, case: str, how: str,
        caplog: pytest.LogCaptureFixture) -> None:
    writer = await seed(prefix)
    corrupt(client, prefix, case)
    store, metrics = make_store(prefix)
    before = errors(metrics, "restore")
    caplog.set_level(logging.WARNING, logger="litellm_dualpool")
    caplog.clear()  # what the writer logged when it read the same entries
    await start(store, how)
    assert errors(metrics, "restore") == before + 1
    assert warnings_about(caplog, f"{prefix}:snapshot")
    # Started from the stream instead: the same state as the worker that wrote it.
    assert store.last_id == writer.last_id
    assert store.calibrator.ratio(KEY) == writer.calibrator.ratio(KEY)
    # A later valid snapshot replaces the garbage; the next start uses it.
    feed(store, 1, start=HONEST)
    await store.sync_once()
    assert await store.checkpoint()
    fresh, fresh_metrics = make_store(prefix)
    assert fresh.restore_blocking()
    assert errors(fresh_metrics, "restore") == 0
    assert fresh.calibrator.ratio(KEY).samples == HONEST + 1
    for worker in (store, writer, fresh):
        await worker.stop()


# -- corrupted stream entries (finding 4) ----------------------------------------------------
def wire(**changes: Any) -> str:
    """A valid observation's wire form with some positions replaced (by field name)."""
    obs = Observation(KEY, shape(3000), 1010, "t", ObservationTrust.TRUSTED, "garbage-maker",
                      1, int(time.time() * 1000))
    items = json.loads(encode(obs))
    names = ["version", "group", "category", "text_bytes", "structured_bytes", "messages",
             "tools", "content", "template", "has_tools", "prompt_tokens", "tenant", "trust",
             "origin", "seq", "time_ms"]
    for name, value in changes.items():
        items[names.index(name)] = value
    return json.dumps(items)


ENTRY_CASES: dict[str, str | bytes] = {
    "prompt_tokens_401_digits": wire(prompt_tokens=10**400),
    "prompt_tokens_above_the_bound": wire(prompt_tokens=MAX_PROMPT_TOKENS + 1),
    "prompt_tokens_nan": wire(prompt_tokens=float("nan")),
    "prompt_tokens_bool": wire(prompt_tokens=True),
    "prompt_tokens_string": wire(prompt_tokens="1010"),
    "text_bytes_huge": wire(text_bytes=10**30),
    "seq_401_digits": wire(seq=10**400),
    "deeply_nested_small": "[" * 2000 + "]" * 2000,
    "deeply_nested_large": "[" * 200_000 + "]" * 200_000,
    "not_json": b"\xff\xfe\x00garbage",
    "object": json.dumps({"prompt_tokens": 5}),
    "unhashable_content_class": wire(content=["code"]),
}


@pytest.mark.parametrize("how", ["restore_blocking", "sync_loop"])
@pytest.mark.parametrize("case", list(ENTRY_CASES))
async def test_a_corrupted_stream_entry_is_skipped_and_counted(
        prefix: str, client: redis.Redis, case: str, how: str,
        caplog: pytest.LogCaptureFixture) -> None:
    stream = f"{prefix}:observations"
    writer, _ = make_store(prefix)
    assert writer.restore_blocking()
    feed(writer, HONEST // 2)
    await writer.sync_once()
    for _ in range(3):  # three of a kind: counted three times, logged once
        client.xadd(stream, {"o": ENTRY_CASES[case]})
    feed(writer, HONEST - HONEST // 2, start=HONEST // 2)
    await writer.sync_once()
    store, metrics = make_store(prefix)
    before = errors(metrics, "decode")
    caplog.set_level(logging.WARNING, logger="litellm_dualpool")
    caplog.clear()  # what the writer logged when it read the same entries
    await start(store, how)
    assert errors(metrics, "decode") == before + 3
    assert len(warnings_about(caplog, "skipping unusable stream entry")) == 1
    assert store.calibrator.ratio(KEY) == writer.calibrator.ratio(KEY)
    assert store.calibrator.ratio(KEY).samples == HONEST
    # Later garbage is skipped the same way, and learning goes on.
    client.xadd(stream, {"o": ENTRY_CASES[case]})
    feed(writer, 1, start=HONEST)
    await writer.sync_once()
    await store.sync_once()
    assert errors(metrics, "decode") == before + 4
    assert store.calibrator.ratio(KEY).samples == HONEST + 1
    await store.stop()
    await writer.stop()


# -- out-of-range values (finding 5) ---------------------------------------------------------
def tamper(client: redis.Redis, prefix: str, *, theta_kb: float,
           stream_id: str | None = None) -> None:
    key = f"{prefix}:snapshot"
    fields = client.hgetall(key)
    payload = json.loads(fields[b"state"])
    _key(payload)["theta"][0] = theta_kb
    client.hset(key, mapping={"state": json.dumps(payload),
                              "stream_id": stream_id or fields[b"stream_id"]})


def estimates(store: RedisStore) -> list[tuple[int, int]]:
    return [store.calibrator.estimate_both(KEY, shape(size)) for size in (500, 4000, 40_000)]


async def test_an_absurd_coefficient_is_clamped_and_re_solved(
        prefix: str, client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    writer = await seed(prefix)
    tamper(client, prefix, theta_kb=1e9)  # 1e9 tokens per KB
    store, metrics = make_store(prefix)
    caplog.set_level(logging.WARNING, logger="litellm_dualpool")
    caplog.clear()  # what the writer logged when it read the same entries
    assert store.restore_blocking()
    assert errors(metrics, "restore") == 1
    assert warnings_about(caplog, "outside the configured bounds")
    assert store.last_id == writer.last_id  # the snapshot was used, its values clamped
    assert estimates(store) == estimates(writer)  # the fit re-solved from its statistics
    feed(store, 1, start=HONEST)
    await store.sync_once()
    assert await store.checkpoint()  # a later valid snapshot replaces it
    fresh, fresh_metrics = make_store(prefix)
    assert fresh.restore_blocking()
    assert errors(fresh_metrics, "restore") == 0
    for worker in (store, writer, fresh):
        await worker.stop()


async def test_a_snapshot_from_the_future_is_refused_and_overwritten(
        prefix: str, client: redis.Redis) -> None:
    """The finding: 1e9 tokens per KB under a far-future stream id made every request a 400,
    and the compare-and-set refused every newer snapshot, so the fleet never healed."""
    writer = await seed(prefix)
    future = f"{int(time.time() * 1000) + YEAR_MS}-0"
    tamper(client, prefix, theta_kb=1e9, stream_id=future)
    store, metrics = make_store(prefix)
    assert store.restore_blocking()
    assert errors(metrics, "restore") == 1
    assert store.last_id == writer.last_id  # replayed the stream instead
    assert estimates(store) == estimates(writer)
    feed(store, 1, start=HONEST)
    await store.sync_once()
    assert await store.checkpoint()  # the compare-and-set no longer blocks on the future id
    assert client.hget(f"{prefix}:snapshot", "stream_id").decode() == store.last_id
    fresh, fresh_metrics = make_store(prefix)
    assert fresh.restore_blocking()
    assert errors(fresh_metrics, "restore") == 0
    assert fresh.last_id == store.last_id
    for worker in (store, writer, fresh):
        await worker.stop()


async def test_a_snapshot_within_the_clock_skew_still_wins_the_compare_and_set(
        prefix: str, client: redis.Redis) -> None:
    """Ids a little ahead of the clock are legitimate (clocks differ): kept, not overwritten."""
    await seed(prefix)
    ahead = f"{int(time.time() * 1000) + MAX_CLOCK_SKEW_MS // 2}-0"
    client.hset(f"{prefix}:snapshot", "stream_id", ahead)
    store, metrics = make_store(prefix)
    assert store.restore_blocking()
    assert errors(metrics, "restore") == 0 and store.last_id == ahead
    feed(store, 1, start=HONEST)
    await store.sync_once()
    assert not await store.checkpoint()  # its stream position is older than the stored one
    await store.stop()


# -- absurd backend usage is never published nor learned --------------------------------------
ABSURD_USAGE = {"401_digits": 10**400, "above_the_bound": MAX_PROMPT_TOKENS + 1, "bool": True,
                "zero": 0, "negative": -5}


@pytest.mark.parametrize("tokens", list(ABSURD_USAGE.values()), ids=list(ABSURD_USAGE))
async def test_an_absurd_usage_is_neither_learned_nor_published(
        prefix: str, client: redis.Redis, tokens: int) -> None:
    store, _ = make_store(prefix)
    assert store.restore_blocking()
    assert store.observe(KEY, shape(3000), tokens) is Outcome.REJECTED
    assert store.pending == 0
    assert store.observe(KEY, shape(3000), 1010) is None  # an honest one is queued
    await store.sync_once()
    assert client.xlen(f"{prefix}:observations") == 1
    assert store.calibrator.ratio(KEY).samples == 1
    await store.stop()


@pytest.mark.litellm_compat
@pytest.mark.parametrize("tokens", list(ABSURD_USAGE.values()), ids=list(ABSURD_USAGE))
async def test_the_engine_never_learns_nor_publishes_an_absurd_backend_usage(
        prefix: str, client: redis.Redis, tokens: int) -> None:
    from litellm_dualpool.config import load_plugin_config
    from litellm_dualpool.proxy.engine import DualPoolEngine
    from litellm_dualpool.state import build_store
    from litellm_dualpool.tenancy import TenantPolicy

    config = load_plugin_config({"model_list": [
        {"model_name": "llama", "litellm_params": {"model": "hosted_vllm/m", "api_base": base},
         "model_info": {"max_model_len": limit}}
        for base, limit in (("http://s", 4096), ("http://l", 16384))], "dualpool_settings": {
        "state": {"backend": "redis", "key_prefix": prefix,
                  "redis": {"host": SHARED_HOST, "port": SHARED_PORT}}}})
    metrics = DualPoolMetrics(CollectorRegistry())
    store = build_store(config.settings.state, Calibrator(), metrics=metrics)
    assert isinstance(store, RedisStore) and store.restore_blocking()
    engine = DualPoolEngine(config, metrics=metrics, store=store)
    body = {"model": "llama", "messages": [{"role": "user", "content": "Explain routing. " * 40}]}

    def invalid() -> float:
        value = metrics.registry.get_sample_value(
            "dualpool_learning_samples_total", {"model_group": "llama", "outcome": "invalid_usage"})
        return value or 0.0  # created by the first invalid usage: its absence is checked below

    before = invalid()
    engine.on_success(engine.plan(body, engine.groups["llama"], TenantPolicy()), None, tokens)
    assert invalid() == before + 1
    assert store.pending == 0
    engine.on_success(engine.plan(body, engine.groups["llama"], TenantPolicy()), None, 180)
    await store.sync_once()
    assert client.xlen(f"{prefix}:observations") == 1  # only the honest usage was published
    keys = store.calibrator.keys()
    assert keys and sum(store.calibrator.ratio(k).samples for k in keys) == 1
    await store.stop()


def test_the_calibrator_refuses_an_absurd_count_without_raising() -> None:
    calibrator = Calibrator()
    for tokens in ABSURD_USAGE.values():
        assert calibrator.observe(KEY, shape(3000), tokens) is False
    assert calibrator.keys() == []


@pytest.mark.parametrize("data", list(ENTRY_CASES.values()), ids=list(ENTRY_CASES))
def test_decode_refuses_garbage_with_a_value_error(data: str | bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_guard_windows_from_the_future_are_dropped_on_restore() -> None:
    guard = InfluenceGuard()
    now_ms = 1_700_000_000_000
    for i in range(20):
        guard.admit(KEY, "t", ObservationTrust.NORMAL, now_ms + i)
    future = InfluenceGuard()
    for i in range(20):
        future.admit(CategoryKey("llama", "prose"), "t", ObservationTrust.NORMAL,
                     now_ms + YEAR_MS + i)
    restored = InfluenceGuard()
    restored.restore(guard.snapshot() + future.snapshot(), max_time_ms=now_ms + 1000)
    assert [(e["category"]) for e in restored.snapshot()] == ["code"]
