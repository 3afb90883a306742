"""Conversation affinity and the learning sample in the engine (no LiteLLM: the engine's own
plan / learn calls, a fake clock, metrics read back from a private registry)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from litellm_dualpool.config import load_plugin_config, parse_settings
from litellm_dualpool.core.policy import Reason
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy.callback import request_session_id
from litellm_dualpool.proxy.engine import DualPoolEngine
from litellm_dualpool.tenancy import TenantPolicy

SHORT, LONG = 4096, 16384
WORDS = ("the", "routing", "of", "requests", "between", "pools", "depends", "on", "their",
         "length", "and", "budget", "tokens", "model", "context", "window", "cache")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine(settings: dict[str, Any] | None = None) -> tuple[DualPoolEngine, CollectorRegistry,
                                                            Clock]:
    model_list = [{"model_name": "llama", "litellm_params": {"model": "hosted_vllm/m",
                                                             "api_base": f"http://{pool}"},
                   "model_info": {"max_model_len": limit, "pool": pool}}
                  for pool, limit in (("short", SHORT), ("long", LONG))]
    config = load_plugin_config({"model_list": model_list, "dualpool_settings": settings or {}})
    registry, clock = CollectorRegistry(), Clock()
    return (DualPoolEngine(config, metrics=DualPoolMetrics(registry), clock=clock), registry,
            clock)


def text(rng: random.Random, n_bytes: int) -> str:
    words: list[str] = []
    size = 0
    while size < n_bytes:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def conversation(first: str, turns: int, max_tokens: int) -> dict[str, Any]:
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": first}]
    for i in range(turns - 1):
        messages += [{"role": "assistant", "content": f"answer {i}"},
                     {"role": "user", "content": f"and then {i}?"}]
    return {"messages": messages, "max_tokens": max_tokens}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# -- conversation affinity -------------------------------------------------------------------
def test_a_conversation_that_went_long_stays_long_and_others_do_not() -> None:
    eng, registry, clock = engine()
    policy = TenantPolicy(tenant="t1")
    first = text(random.Random(1), 8000)  # ~2000 tokens at the cold-start 4 bytes/token
    turn1 = eng.plan(conversation(first, 1, 3000), eng.groups["llama"], policy)
    assert turn1.plan.decision.pool == "long"  # the output budget does not fit short
    assert value(registry, "dualpool_affinity_total", model_group="llama", outcome="pinned") == 1

    turn2 = conversation(first, 2, 100)
    alone = eng.estimator.estimate(turn2, "llama").budget
    assert alone.total_tokens < SHORT  # on its own, turn 2 fits the short pool
    clock.now += 60
    held = eng.plan(turn2, eng.groups["llama"], policy)
    assert (held.plan.decision.pool, held.plan.decision.reason) == ("long", Reason.AFFINITY)
    assert held.progress.pool == "long"
    assert value(registry, "dualpool_affinity_total", model_group="llama", outcome="held") == 1

    other = conversation(text(random.Random(2), 8000), 2, 100)
    assert eng.plan(other, eng.groups["llama"], policy).plan.decision.pool == "short"
    # another tenant sending the same conversation is not held by t1's pin
    stranger = eng.plan(turn2, eng.groups["llama"], TenantPolicy(tenant="t2"))
    assert stranger.plan.decision.pool == "short"


def test_a_pin_expires_after_its_ttl() -> None:
    eng, registry, clock = engine({"affinity": {"ttl_seconds": 30}})
    policy = TenantPolicy(tenant="t1")
    first = text(random.Random(3), 8000)
    eng.plan(conversation(first, 1, 3000), eng.groups["llama"], policy)
    clock.now += 31
    later = eng.plan(conversation(first, 2, 100), eng.groups["llama"], policy)
    assert later.plan.decision.pool == "short"
    assert value(registry, "dualpool_affinity_total", model_group="llama", outcome="expired") == 1


def test_a_session_id_holds_even_a_first_message_that_changed() -> None:
    eng, _, _ = engine()
    policy = TenantPolicy(tenant="t1")
    eng.plan(conversation(text(random.Random(4), 8000), 1, 3000), eng.groups["llama"], policy,
             session_id="s-1")
    body = conversation("short question", 1, 100)
    held = eng.plan(body, eng.groups["llama"], policy, session_id="s-1")
    assert held.plan.decision.reason is Reason.AFFINITY
    assert eng.plan(body, eng.groups["llama"], policy, session_id="s-2").plan.decision.pool == (
        "short")


def test_affinity_off_and_a_single_turn_repeat_are_not_held() -> None:
    eng, _, _ = engine({"affinity": {"enabled": False}})
    policy = TenantPolicy(tenant="t1")
    first = text(random.Random(5), 8000)
    eng.plan(conversation(first, 1, 3000), eng.groups["llama"], policy)
    assert eng.plan(conversation(first, 2, 100), eng.groups["llama"], policy).plan.decision.pool == (
        "short")
    on, _, _ = engine()
    on.plan(conversation(first, 1, 3000), on.groups["llama"], policy)
    # the same single-turn prompt again is a new request, not a continuation
    assert on.plan(conversation(first, 1, 100), on.groups["llama"], policy).plan.decision.pool == (
        "short")


def test_affinity_never_bypasses_the_callers_pools() -> None:
    eng, _, _ = engine()
    first = text(random.Random(6), 8000)
    eng.plan(conversation(first, 1, 3000), eng.groups["llama"], TenantPolicy(tenant="t1"))
    limited = TenantPolicy(tenant="t1", allow_long_pool=False)
    assert eng.plan(conversation(first, 2, 100), eng.groups["llama"],
                    limited).plan.decision.pool == "short"


def test_a_conversation_recovered_into_the_long_pool_stays_there() -> None:
    eng, registry, _ = engine()
    policy = TenantPolicy(tenant="t1")
    first = text(random.Random(10), 8000)
    record = eng.plan(conversation(first, 1, 100), eng.groups["llama"], policy)
    assert record.plan.decision.pool == "short" and record.conversation is None
    deployments = [{"model_info": {"id": pool, "max_model_len": limit, "pool": pool}}
                   for pool, limit in (("short", SHORT), ("long", LONG))]
    eng.choose("llama", deployments, record)
    rejection = (f"This model's maximum context length is {SHORT} tokens. However, your prompt "
                 f"contains at least {SHORT + 1} input tokens.")
    chosen = eng.choose("llama::dualpool-recovery", deployments, record, last_failure=rejection)
    assert [d["model_info"]["pool"] for d in chosen] == ["long"]
    assert value(registry, "dualpool_affinity_total", model_group="llama", outcome="pinned") == 1
    held = eng.plan(conversation(first, 2, 100), eng.groups["llama"], policy)
    assert (held.plan.decision.pool, held.plan.decision.reason) == ("long", Reason.AFFINITY)


def test_the_table_is_bounded_by_max_conversations() -> None:
    eng, registry, _ = engine({"affinity": {"max_conversations": 5}})
    policy = TenantPolicy(tenant="t1")
    for i in range(12):
        eng.plan(conversation(f"{i} " + text(random.Random(i), 8000), 1, 3000),
                 eng.groups["llama"], policy)
    assert eng.affinity is not None and len(eng.affinity) == 5
    assert value(registry, "dualpool_affinity_total", model_group="llama", outcome="evicted") == 7


# -- the learning sample ---------------------------------------------------------------------
SAMPLING = {"learning": {"sample_every": 4, "settled_samples": 40, "settled_max_spread": 0.2}}


def true_tokens(body: dict[str, Any], bytes_per_token: float) -> int:
    return sum(int(len(m["content"].encode()) / bytes_per_token) + 5
               for m in body["messages"]) + 1


def serve(eng: DualPoolEngine, body: dict[str, Any], bytes_per_token: float = 3.0) -> Any:
    record = eng.plan(body, eng.groups["llama"], TenantPolicy())
    eng.learn(record, true_tokens(body, bytes_per_token))
    return record


def test_a_settled_key_learns_from_one_ordinary_request_in_n() -> None:
    eng, registry, _ = engine(SAMPLING)
    rng = random.Random(7)
    bodies = [{"messages": [{"role": "user", "content": text(rng, rng.randint(400, 2000))}],
               "max_tokens": 16} for _ in range(400)]
    for body in bodies[:100]:  # settles the key
        serve(eng, body)
    key = eng.plan(bodies[0], eng.groups["llama"], TenantPolicy()).plan.key
    assert eng.calibrator.settled(key, 40, 0.2)
    learned = value(registry, "dualpool_learning_samples_total", model_group="llama",
                    outcome="learned")
    skipped = value(registry, "dualpool_learning_samples_total", model_group="llama",
                    outcome="skipped")
    for body in bodies[100:]:
        serve(eng, body)
    learned = value(registry, "dualpool_learning_samples_total", model_group="llama",
                    outcome="learned") - learned
    skipped = value(registry, "dualpool_learning_samples_total", model_group="llama",
                    outcome="skipped") - skipped
    assert (learned, skipped) == (75, 225)
    # and the learned state is still the truth
    assert abs(eng.calibrator.ratio(key).bytes_per_token - 3.0) < 0.1


def test_near_limit_requests_and_misroutes_are_always_learned() -> None:
    eng, registry, _ = engine(SAMPLING)
    rng = random.Random(8)
    for _ in range(100):
        serve(eng, {"messages": [{"role": "user", "content": text(rng, 1000)}],
                    "max_tokens": 16})
    before = value(registry, "dualpool_learning_samples_total", model_group="llama",
                   outcome="learned")
    near = 0
    for _ in range(20):  # ~3900 of 4096 tokens: near the short pool's limit
        body = {"messages": [{"role": "user", "content": text(rng, 11_500)}], "max_tokens": 16}
        record = serve(eng, body)
        near += record.plan.decision.pool is not None
    assert value(registry, "dualpool_learning_samples_total", model_group="llama",
                 outcome="learned") - before == near == 20
    record = eng.plan({"messages": [{"role": "user", "content": text(rng, 1000)}],
                       "max_tokens": 16}, eng.groups["llama"], TenantPolicy())
    record.progress.recovered_from = "short"  # served after a misroute: always learned
    assert eng.learn(record, 350)


def test_sampled_learning_still_follows_a_change_of_tokenizer() -> None:
    eng, _, _ = engine(SAMPLING)
    rng = random.Random(9)
    for ratio, requests in ((3.0, 300), (4.2, 3000)):
        for _ in range(requests):
            record = serve(eng, {"messages": [{"role": "user",
                                               "content": text(rng, rng.randint(400, 2000))}],
                                 "max_tokens": 16}, ratio)
    key = record.plan.key
    assert eng.calibrator.settled(key, 40, 0.2)  # settled again on the new ratio: sampled
    assert abs(eng.calibrator.ratio(key).bytes_per_token - 4.2) < 0.15


# -- settings and the session id as LiteLLM records it ---------------------------------------
@pytest.mark.parametrize(("settings", "path"), [
    ({"affinity": {"max_conversations": 0}}, "dualpool_settings.affinity.max_conversations"),
    ({"affinity": {"ttl_seconds": 0}}, "dualpool_settings.affinity.ttl_seconds"),
    ({"affinity": {"sticky": True}}, "dualpool_settings.affinity.sticky"),
    ({"learning": {"sample_every": 0}}, "dualpool_settings.learning.sample_every"),
    ({"learning": {"near_limit_fraction": 2}}, "dualpool_settings.learning.near_limit_fraction"),
])
def test_bad_settings_name_their_path(settings: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(settings)
    assert caught.value.path == path


def test_the_session_id_is_read_where_litellm_records_it() -> None:
    assert request_session_id({}, {"session_id": "s1"}) == "s1"
    assert request_session_id({"litellm_session_id": "s2"}, {}) == "s2"
    generated = {"session_id": "uuid", "litellm_session_id_generated": True}
    assert request_session_id({"litellm_session_id": "uuid"}, generated) is None
    assert request_session_id({}, None) is None
