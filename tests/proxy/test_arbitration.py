"""The arbiter at its HTTP edge (respx): vLLM's /tokenize request shapes, validation of the
answer, timeouts, 404s remembered, the concurrency cap, and which deployments are asked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from litellm_dualpool.config import ArbitrationConfig
from litellm_dualpool.metrics import DualPoolMetrics, init_group_series
from litellm_dualpool.proxy.arbitration import (
    Arbiter,
    Outcome,
    parse_answer,
    parse_count,
    tokenize_body,
    tokenize_url,
)
from tests.prometheus_text import registry_value

BASE = "http://short-0.test:8000"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def deployment(ident: str = "d0", base: str = BASE, model: str = "hosted_vllm/llama",
               key: str | None = "sk-x") -> dict[str, Any]:
    params: dict[str, Any] = {"model": model, "api_base": base + "/v1"}
    if key is not None:
        params["api_key"] = key
    return {"model_name": "g", "litellm_params": params, "model_info": {"id": ident}}


def arbiter(**settings: Any) -> tuple[Arbiter, CollectorRegistry, Clock]:
    registry, clock = CollectorRegistry(), Clock()
    metrics = DualPoolMetrics(registry)
    init_group_series(metrics, "g")
    return Arbiter(ArbitrationConfig(**settings), metrics, clock=clock), registry, clock


def outcomes(registry: CollectorRegistry) -> dict[str, float]:
    return {o.value: registry_value(registry, "dualpool_arbitrations_total", model_group="g",
                                    outcome=o.value) for o in Outcome}


@pytest.mark.parametrize(("body", "expected"), [
    (CHAT, {"model": "llama", "messages": CHAT["messages"], "add_generation_prompt": True}),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}],
      "chat_template_kwargs": {"enable_thinking": False}},
     {"model": "llama", "messages": CHAT["messages"], "add_generation_prompt": True,
      "tools": [{"type": "function", "function": {"name": "f"}}],
      "chat_template_kwargs": {"enable_thinking": False}}),
    ({"prompt": "Once upon"}, {"model": "llama", "prompt": "Once upon"}),
    ({"prompt": [1, 2, 3]}, None),                       # token ids: exact already
    ({"prompt": ["a", "b"]}, None),                      # a batch: no single count
    ({"input": [{"role": "user", "content": "x"}]}, None),  # Responses
    ({**CHAT, "system": "be brief"}, None),              # Anthropic Messages
])
def test_tokenize_bodies_follow_vllms_shapes(body: dict[str, Any], expected: Any) -> None:
    assert tokenize_body(body, "llama") == expected


def test_tokenize_url_is_at_the_server_root() -> None:
    assert tokenize_url("http://h:8000/v1") == "http://h:8000/tokenize"
    assert tokenize_url("http://h:8000/v1/") == "http://h:8000/tokenize"
    assert tokenize_url("http://h:8000") == "http://h:8000/tokenize"


@pytest.mark.parametrize(("payload", "count"), [
    ({"count": 3, "max_model_len": 10, "tokens": [1, 2, 3]}, 3),
    ({"count": 3, "max_model_len": 10}, 3),
    ({"count": 3, "tokens": [1, 2]}, None),      # inconsistent
    ({"count": 0, "tokens": []}, None),
    ({"count": True}, None),
    ({"count": 3.0}, None),
    ({"count": 10**9}, None),                    # above any context window
    ([3], None),
    ({"tokens": [1]}, None),
])
def test_answers_are_validated(payload: Any, count: int | None) -> None:
    assert parse_count(payload) == count


_IDS = ",".join(str(128000 + i) for i in range(5000))


@pytest.mark.parametrize(("raw", "count"), [
    ('{"count":5000,"max_model_len":8192,"tokens":[' + _IDS + '],"token_strs":null}', 5000),
    ('{"count":4999,"max_model_len":8192,"tokens":[' + _IDS + ']}', None),  # one id more
    ('{"count": 3, "tokens" : [1, 2, 3]}', 3),        # whitespace: parsed in full
    ('{"count":3,"tokens":[0,2,3]}', 3),              # id 0: parsed in full
    ('{"count":3,"tokens":[1,,3]}', "error"),         # not JSON: neither path accepts it
    ('{"count":3,"tokens":[1,2,3,]}', "error"),
    ('{"count":3,"tokens":[1,02,3]}', "error"),
    ('{"count":2,"tokens":[1,2.5]}', 2),              # not an id, but a list of 2
    ('{"count":2,"tokens":[-1,2]}', 2),
    ('{"count":2,"tokens":[[1],[2]]}', 2),
    ('{"count":0,"tokens":[]}', None),
    ('{"count":3}', 3),
    ('{"meta":{"tokens":[1]},"count":1}', 1),         # a nested "tokens" is not the answer's
    ('{"meta":{"tokens":[1]},"count":2,"tokens":[1,2]}', 2),
    ('{"tokens":[1,2],"count":2,"tokens":[1]}', None),  # a repeated key: the last one counts
    ('{"count":2,"token_strs":["tokens",":"],"tokens":[1,2]}', 2),
    ('[{"count":1,"tokens":[1]}]', None),
    ('{"count":2,"tokens":[1,2]', "error"),
    ('not json', "error"),
])
def test_answer_bytes_are_counted_as_their_json_says(raw: str, count: int | str | None) -> None:
    # the fast path (ids counted by commas) answers what decoding the whole answer answers
    if count == "error":
        with pytest.raises(ValueError):
            json.loads(raw)
        with pytest.raises(ValueError):
            parse_answer(raw.encode())
        return
    assert parse_count(json.loads(raw)) == count
    assert parse_answer(raw.encode()) == count


@given(ids=st.lists(st.integers(0, 300_000), max_size=40), delta=st.integers(-2, 2),
       compact=st.booleans(), extra=st.sampled_from(['', ',"token_strs":null', ',"x":{"tokens":[7]}']))
def test_counting_ids_by_commas_agrees_with_decoding_them(ids: list[int], delta: int,
                                                          compact: bool, extra: str) -> None:
    payload = {"count": len(ids) + delta, "max_model_len": 8192, "tokens": ids}
    raw = json.dumps(payload, separators=(",", ":") if compact else None)[:-1] + extra + "}"
    assert parse_answer(raw.encode()) == parse_count(json.loads(raw))


@respx.mock
async def test_an_exact_count_is_read_with_the_deployments_key() -> None:
    route = respx.post(BASE + "/tokenize").mock(return_value=httpx.Response(
        200, json={"count": 2, "max_model_len": 4096, "tokens": [7, 8]}))
    arb, registry, _ = arbiter()
    assert await arb.count("g", [deployment()], CHAT) == (Outcome.EXACT, 2)
    sent = route.calls.last.request
    assert sent.headers["authorization"] == "Bearer sk-x"
    assert outcomes(registry)["exact"] == 1
    assert registry_value(registry, "dualpool_arbitration_seconds_count", model_group="g") == 1
    await arb.aclose()


@respx.mock
async def test_a_404_is_remembered_until_the_retry_time() -> None:
    route = respx.post(BASE + "/tokenize").mock(return_value=httpx.Response(404))
    arb, registry, clock = arbiter(unsupported_retry_seconds=60)
    assert await arb.count("g", [deployment()], CHAT) == (Outcome.UNSUPPORTED, None)
    assert await arb.count("g", [deployment()], CHAT) == (Outcome.NO_DEPLOYMENT, None)
    assert route.call_count == 1
    clock.now += 61
    assert await arb.count("g", [deployment()], CHAT) == (Outcome.UNSUPPORTED, None)
    assert route.call_count == 2
    assert outcomes(registry) == {**dict.fromkeys((o.value for o in Outcome), 0.0),
                                  "unsupported": 2, "no_deployment": 1}
    await arb.aclose()


@respx.mock
@pytest.mark.parametrize(("response", "outcome"), [
    (httpx.Response(500, json={"error": "boom"}), Outcome.ERROR),
    (httpx.Response(200, json={"count": "many"}), Outcome.ERROR),
    (httpx.Response(200, text="not json"), Outcome.ERROR),
    (httpx.ConnectError("refused"), Outcome.ERROR),
    (httpx.ReadTimeout("slow"), Outcome.TIMEOUT),
])
async def test_failures_fall_back_and_back_off(response: Any, outcome: Outcome) -> None:
    route = respx.post(BASE + "/tokenize")
    if isinstance(response, Exception):
        route.mock(side_effect=response)
    else:
        route.mock(return_value=response)
    arb, _, clock = arbiter()
    assert await arb.count("g", [deployment()], CHAT) == (outcome, None)
    # a failing deployment is left alone for a few seconds, then asked again
    assert await arb.count("g", [deployment()], CHAT) == (Outcome.NO_DEPLOYMENT, None)
    clock.now += 10
    assert (await arb.count("g", [deployment()], CHAT))[0] is outcome
    await arb.aclose()


@respx.mock
async def test_a_refused_body_does_not_bench_the_deployment() -> None:
    respx.post(BASE + "/tokenize").mock(return_value=httpx.Response(400, json={"error": "x"}))
    arb, registry, _ = arbiter()
    assert await arb.count("g", [deployment()], CHAT) == (Outcome.ERROR, None)
    assert await arb.count("g", [deployment()], CHAT) == (Outcome.ERROR, None)  # asked again
    assert outcomes(registry)["error"] == 2
    await arb.aclose()


@respx.mock
async def test_a_slow_answer_times_out() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"count": 2})

    respx.post(BASE + "/tokenize").mock(side_effect=slow)
    arb, registry, _ = arbiter(timeout_ms=20)
    assert await arb.count("g", [deployment()], CHAT) == (Outcome.TIMEOUT, None)
    assert outcomes(registry)["timeout"] == 1
    await arb.aclose()


@respx.mock
async def test_at_the_cap_the_estimate_decides_without_waiting() -> None:
    release = asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json={"count": 2, "tokens": [1, 2]})

    respx.post(BASE + "/tokenize").mock(side_effect=held)
    arb, registry, _ = arbiter(max_concurrent=1, timeout_ms=5000)
    first = asyncio.create_task(arb.count("g", [deployment()], CHAT))
    await asyncio.sleep(0.05)
    assert await arb.count("g", [deployment()], CHAT) == (Outcome.SKIPPED_BUSY, None)
    release.set()
    assert await first == (Outcome.EXACT, 2)
    assert outcomes(registry)["skipped_busy"] == 1
    await arb.aclose()


async def test_only_configured_providers_with_an_api_base_are_asked() -> None:
    arb, registry, _ = arbiter()
    openai = deployment(model="openai/gpt-4o")
    no_base = deployment()
    no_base["litellm_params"].pop("api_base")
    assert arb.eligible([openai, no_base]) == []
    assert await arb.count("g", [openai], CHAT) == (Outcome.NO_DEPLOYMENT, None)
    assert await arb.count("g", [deployment()], {"prompt": [1, 2]}) == (Outcome.NO_DEPLOYMENT,
                                                                        None)
    assert outcomes(registry)["no_deployment"] == 2
