"""The plugin's hooks against a real litellm.Router, with respx standing in for two vLLM pools.

`Env.call` does what the proxy does (its pre-call hook, then the router), so every hook runs as
in production except the proxy-only streaming iterator, which tests call on the router's stream.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import litellm
import pytest
from litellm.proxy._types import UserAPIKeyAuth
from plugin_env import LONG_LEN, SHORT_LEN, completion_body, tokens_of

from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.proxy.client_errors import ContextLengthExceededError
from litellm_dualpool.proxy.record import PlanRecord, record_in

# One event loop for the module: LiteLLM's logging worker lives on the loop it first ran on.
pytestmark = [pytest.mark.litellm_compat, pytest.mark.asyncio(loop_scope="module")]

WORDS = "lorem ipsum dolor sit amet "  # 27 bytes


def record(data: dict[str, Any]) -> PlanRecord:
    """The plugin's plan in a request's metadata (a failure if there is none)."""
    found = record_in(data["metadata"])
    assert found is not None, "no plan in the request's metadata"
    return found


def text_of(n_bytes: int) -> str:
    return (WORDS * (n_bytes // len(WORDS) + 1))[:n_bytes]


async def test_short_request_goes_to_the_short_pool(env) -> None:
    response, data = await env.call("hello there", max_tokens=64)
    await env.settle()
    stash = record(data)
    assert env.pool_hits == ["short"]
    assert (stash.progress.pool, stash.progress.reason) == ("short", "fits")
    assert response.choices[0].message.content == "ok"
    assert env.metric("dualpool_requests_total", model_group="llama", pool="short",
                      reason="fits") == 1
    assert env.metric("dualpool_decision_seconds_count") == 1
    # the budget header is the admin's; a tenant key and an unauthenticated caller
    # see the pool only (each caller's own request: the plan keeps what its policy shows)
    admin = UserAPIKeyAuth(api_key="sk-master-key-0001", user_role="proxy_admin")
    response, data = await env.call("hello there", max_tokens=64, user=admin)
    headers = await env.plugin.async_post_call_response_headers_hook(data, admin, response)
    assert headers == {"x-dualpool-pool": "short", "x-dualpool-count": "estimated",
                       "x-dualpool-budget-tokens": str(record(data).plan.total_tokens)}
    for caller in (UserAPIKeyAuth(api_key="sk-tenant-key-0001", team_id="t"), None):
        response, data = await env.call("hello there", max_tokens=64, user=caller)
        headers = await env.plugin.async_post_call_response_headers_hook(data, caller, response)
        assert headers == {"x-dualpool-pool": "short", "x-dualpool-count": "estimated"}


async def test_long_prompt_goes_to_the_long_pool(env) -> None:
    await env.call(text_of(SHORT_LEN * 5), max_tokens=16)
    await env.settle()
    assert env.pool_hits == ["long"]


async def test_max_tokens_counts_in_the_budget(env) -> None:
    _, data = await env.call("hello", max_tokens=SHORT_LEN)
    await env.settle()
    assert env.pool_hits == ["long"]
    assert record(data).plan.total_tokens > SHORT_LEN


async def test_default_output_budget_applies_without_max_tokens(make_env) -> None:
    env = make_env({"default_output_tokens": SHORT_LEN})
    await env.call("hello")
    await env.settle()
    assert env.pool_hits == ["long"]


async def test_over_everything_is_refused_before_any_backend_call(env) -> None:
    admin = UserAPIKeyAuth(user_role="proxy_admin")
    with pytest.raises(ContextLengthExceededError) as caught:
        await env.call("hello", max_tokens=LONG_LEN + 1, user=admin)
    body = caught.value.to_dict()
    assert (caught.value.code, body["code"], body["type"]) == (
        "400", "context_length_exceeded", "invalid_request_error")
    message = body["message"]
    assert message.startswith(f"This model's maximum context length is {LONG_LEN} tokens.")
    budget = int(re.search(r"needs an estimated (\d+) tokens", message).group(1))
    assert budget > LONG_LEN
    assert caught.value.headers == {"x-dualpool-budget-tokens": str(budget)}  # the admin's
    assert env.pool_hits == []
    assert env.metric("dualpool_refusals_total", model_group="llama", reason="fits_nowhere") == 1


async def test_over_everything_by_the_margin_only_goes_to_the_largest_pool(env) -> None:
    # max_tokens puts the conservative total just over the long pool, the optimistic one under it
    body = {"model": "llama", "messages": [{"role": "user", "content": "hello " * 2000}]}
    estimate = env.plugin.engine.estimator.estimate(body, "llama", default_output_tokens=0)
    point, conservative = estimate.budget.prompt_tokens_point, estimate.budget.prompt_tokens
    assert conservative - point >= 4  # a margin to fall inside
    max_tokens = LONG_LEN - conservative + 2
    _, data = await env.call("hello " * 2000, max_tokens=max_tokens)
    await env.settle()
    assert env.pool_hits == ["long"]
    stash = record(data)
    assert stash.progress.reason == "borderline" and stash.plan.total_tokens > LONG_LEN
    assert env.metric("dualpool_requests_total", model_group="llama", pool="long", reason="borderline") == 1
    assert env.metric("dualpool_refusals_total", model_group="llama", reason="fits_nowhere") == 0


#: Context-length rejections in each engine's own words and envelope ({L} limit, {P} prompt,
#: {T} prompt + 64): vLLM current and legacy, SGLang current and older, TGI.
BACKEND_REJECTIONS = {
    "current": {"error": {"message": "This model's maximum context length is {L} tokens. However, "
                          "your prompt contains at least {P} input tokens, which exceeds this limit "
                          "even without any output tokens. Please reduce the length of the input "
                          "messages.", "type": "BadRequestError", "param": "input_tokens",
                          "code": 400}},
    "current_with_output": {"error": {"message": "This model's maximum context length is {L} "
                                      "tokens. However, you requested 64 output tokens and your "
                                      "prompt contains at least {P} input tokens, for a total of at "
                                      "least {T} tokens. Please reduce the length of the input "
                                      "prompt or the number of requested output tokens.",
                                      "type": "BadRequestError", "param": "input_tokens",
                                      "code": 400}},
    "legacy_flat": {"object": "error", "message": "This model's maximum context length is {L} "
                    "tokens. However, you requested {T} tokens ({P} in the messages, 64 in the "
                    "completion). Please reduce the length of the messages or completion.",
                    "type": "BadRequestError", "param": None, "code": 400},
    "max_tokens_param": {"error": {"message": "'max_tokens' or 'max_completion_tokens' is too "
                                   "large: 64. This model's maximum context length is {L} tokens "
                                   "and your request has {P} input tokens (64 > {L} - {P}).",
                                   "type": "BadRequestError", "param": "max_tokens", "code": 400}},
    # LiteLLM 1.106 maps none of the next two (1.110 maps the first): install() teaches it.
    "sglang_current": {"object": "error", "message": "Requested token count exceeds the model's "
                       "maximum context length of {L} tokens. You requested a total of {T} tokens: "
                       "{P} tokens from the input messages and 64 tokens for the completion. "
                       "Please reduce the number of tokens in the input messages or the "
                       "completion to fit within the limit.", "type": "BadRequest", "param": None,
                       "code": 400},
    "sglang_input_length": {"object": "error", "message": "Input length ({P} tokens) exceeds the "
                            "maximum allowed length ({L} tokens). Use a shorter input or enable "
                            "--allow-auto-truncate.", "type": "BadRequest", "param": None,
                            "code": 400},
    "sglang_older": {"object": "error", "message": "The input ({P} tokens) is longer than the "
                     "model's context length ({L} tokens).", "type": "BadRequest", "param": None,
                     "code": 400},
    "tgi": {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= {L}. "
            "Given: {P} `inputs` tokens and 64 `max_new_tokens`", "error_type": "validation"},
}
#: A prompt the short pool (4096) can really overflow: ~4.2 KB, so its hard upper bound
#: (bytes + template + output) is above 4096, while the cold estimate (~1,100 tokens) sends it
#: short. A request that cannot overflow the pool is not recovered (test_context_rejections.py).
OVERFLOWING = "A question that the short pool refuses. " * 105


def _reject_with(template: dict[str, Any], hits: list[str]):
    def respond(request: httpx.Request) -> httpx.Response:
        hits.append("short")
        tokens = tokens_of(request)
        text = json.dumps(template).replace("{L}", str(SHORT_LEN)).replace(
            "{P}", str(tokens)).replace("{T}", str(tokens + 64))
        return httpx.Response(400, content=text, headers={"content-type": "application/json"})
    return respond


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("wording", sorted(BACKEND_REJECTIONS))
async def test_misroute_is_recovered_on_the_long_pool(make_env, wording: str, stream: bool) -> None:
    env = make_env()
    env.short.mock(side_effect=_reject_with(BACKEND_REJECTIONS[wording], env.pool_hits))
    response, data = await env.call(OVERFLOWING, max_tokens=64, stream=stream)
    if stream:
        chunks = [chunk async for chunk in response]
        assert chunks
    await env.settle(lambda: env.metric("dualpool_misroutes_recovered_total", model_group="llama",
                                        from_pool="short", to_pool="long") == 1)
    stash = record(data)
    assert env.pool_hits == ["short", "long"]
    assert (stash.progress.pool, stash.progress.recovered_from, stash.progress.reason) == (
        "long", "short", "misroute_recovery")
    assert env.metric("dualpool_misroutes_total", model_group="llama", pool="short") == 1
    # one request, one decision (short): the recovery hop is counted as a recovery, not again
    assert env.metric("dualpool_requests_total", model_group="llama", pool="short",
                      reason="fits") == 1
    assert env.metric("dualpool_requests_total", model_group="llama", pool="long",
                      reason="misroute_recovery") == 0
    # Learned once per request: from the rejection's count where it is exact, else ("at least
    # N" is a lower bound) from the recovered call's usage, which a bare Router stream lacks.
    lower_bound = wording.startswith("current")
    expected = 0 if (lower_bound and stream) else 1
    assert env.metric("dualpool_learning_samples_total", model_group="llama",
                      outcome="learned") == expected


#: vLLM's validation 400 for a non-number temperature, quoting the client's text: here a
#: context-length sentence, which LiteLLM maps to ContextWindowExceededError.
QUOTED = ("This model's maximum context length is 4096 tokens. However, you requested 5000 "
          "tokens (230 in the messages, 4770 in the completion).")


def _validation_error(hits: list[str]):
    def respond(request: httpx.Request) -> httpx.Response:
        hits.append("short")
        error = {"type": "float_parsing", "loc": ("body", "temperature"),
                 "msg": "Input should be a valid number, unable to parse string as a number",
                 "input": json.loads(request.content)["temperature"]}
        return httpx.Response(400, json={"error": {"message": f"1 validation error:\n  {error}",
                                                   "type": "Bad Request", "param": "temperature",
                                                   "code": 400}})
    return respond


@pytest.mark.parametrize("content", [OVERFLOWING, "Say hi."], ids=["big", "small"])
async def test_a_quoted_rejection_is_not_recovered_counted_or_learned(make_env,
                                                                      content: str) -> None:
    """The recovery hop reads LiteLLM's breadcrumb of the failure (a big request could overflow
    the pool, so only that evidence stops it) and the request's size (a small one cannot)."""
    env = make_env()
    env.short.mock(side_effect=_validation_error(env.pool_hits))
    with pytest.raises(litellm.BadRequestError) as raised:
        await env.call(content, max_tokens=64, temperature=QUOTED)
    assert "float_parsing" in str(raised.value)  # the client gets the backend's own 400
    await env.settle()
    assert env.pool_hits == ["short"]  # the long pool was never called
    assert env.metric("dualpool_misroutes_total", model_group="llama", pool="short") == 0
    assert env.metric("dualpool_requests_total", model_group="llama", pool="long",
                      reason="misroute_recovery") == 0
    assert env.metric("dualpool_learning_samples_total", model_group="llama",
                      outcome="learned") == 0


async def test_the_recovery_group_is_hidden_and_wired_as_a_fallback(env) -> None:
    names = [d["model_name"] for d in env.router.model_list]
    recovery = "llama::dualpool-recovery"
    assert names.count(recovery) == 1  # a copy of the long pool only
    assert {"llama": [recovery]} in env.router.context_window_fallbacks
    listed = await env.plugin.async_filter_listed_models(None, ["llama", recovery, "other"])
    assert list(listed) == ["llama", "other"]


async def test_does_not_learn_without_backend_usage(make_env) -> None:
    env = make_env(usage=False)
    await env.call("hello there", max_tokens=8)
    await env.settle(lambda: env.metric("dualpool_learning_samples_total", model_group="llama",
                                        outcome="no_backend_usage") == 1)
    assert env.plugin.engine.calibrator.keys() == []


async def test_learns_from_usage_the_backend_reported(env) -> None:
    await env.call("hello there, a prose sentence of some length", max_tokens=8)
    await env.settle(lambda: env.metric("dualpool_learning_samples_total", model_group="llama",
                                        outcome="learned") == 1)
    key = CategoryKey("llama", "prose")
    assert env.plugin.engine.calibrator.ratio(key).samples == 1
    assert env.metric("dualpool_prompt_tokens_estimate_error_ratio_count", model_group="llama",
                      category="prose") == 1
    assert env.metric("dualpool_learned_bytes_per_token", model_group="llama",
                      category="prose") > 0


def _sse(prompt_tokens: int | None) -> httpx.Response:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": "ok"},
                                   "finish_reason": None}]),
              dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])]
    if prompt_tokens is not None:
        events.append(dict(base, choices=[], usage={"prompt_tokens": prompt_tokens,
                                                    "completion_tokens": 1,
                                                    "total_tokens": prompt_tokens + 1}))
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, content=text, headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("reported", [True, False], ids=["backend_usage", "no_backend_usage"])
async def test_streams_learn_from_the_backend_usage_chunk_only(make_env, reported: bool) -> None:
    env = make_env()
    env.short.mock(side_effect=lambda request: _sse(tokens_of(request) if reported else None))
    stream, data = await env.call("hello there, streaming", max_tokens=8, stream=True,
                                  stream_options={"include_usage": True})
    relayed = [c async for c in env.plugin.async_post_call_streaming_iterator_hook(
        None, stream, data)]
    assert relayed
    await env.settle()
    outcome = "learned" if reported else "no_backend_usage"
    assert env.metric("dualpool_learning_samples_total", model_group="llama",
                      outcome=outcome) == 1
    assert len(env.plugin.engine.calibrator.keys()) == (1 if reported else 0)


async def test_forcing_a_pool_needs_the_keys_permission(env) -> None:
    override = {"dualpool": {"pool": "long", "category": "code"}}
    _, data = await env.call("hi", max_tokens=8, metadata=dict(override))
    assert record(data).progress.pool == "short"  # default policy: no forcing
    assert record(data).plan.category == "code"  # categories are allowed
    allowed = UserAPIKeyAuth(metadata={"dualpool_policy": {"allow_force_pool": True}})
    _, data = await env.call("hi", max_tokens=8, metadata=dict(override), user=allowed)
    await env.settle()
    assert (record(data).progress.pool, record(data).progress.reason) == (
        "long", "forced")
    assert env.pool_hits == ["short", "long"]


async def test_a_client_cannot_forge_the_plan(env) -> None:
    forged = {"_dualpool": {"id": "x", "group": "llama", "pool": "long", "budget": 1}}
    _, data = await env.call("hi", max_tokens=8, metadata=forged)
    await env.settle()
    assert env.pool_hits == ["short"]
    assert record(data).plan.id != "x"


async def test_spillover_when_the_short_pool_is_saturated(env) -> None:
    inflight = env.plugin.engine.inflight
    for i in range(4):  # max_num_seqs 4 -> load 1.0 >= 0.9
        inflight.open(f"busy{i}", "llama", "short")
    _, data = await env.call("hi", max_tokens=8)
    for i in range(4):
        inflight.close(f"busy{i}")
    await env.settle()
    assert (record(data).progress.pool, record(data).progress.reason) == (
        "long", "spillover")
    assert env.pool_hits == ["long"]
    assert env.metric("dualpool_spillovers_total", model_group="llama", from_pool="short",
                      to_pool="long") == 1


@pytest.mark.parametrize(("short_info", "pool"), [({}, "short"), ({"max_in_flight": 2}, "long")])
async def test_max_in_flight_is_the_spillover_capacity(make_env, short_info: dict[str, Any],
                                                       pool: str) -> None:
    # two requests in flight: half of max_num_seqs 4, all of max_in_flight 2
    env = make_env(short_info=short_info)
    inflight = env.plugin.engine.inflight
    for i in range(2):
        inflight.open(f"busy{i}", "llama", "short")
    _, data = await env.call("hi", max_tokens=8)
    for i in range(2):
        inflight.close(f"busy{i}")
    await env.settle()
    assert record(data).progress.pool == pool
    assert env.pool_hits == [pool]


async def test_other_groups_are_untouched(env) -> None:
    from litellm.proxy._types import UserAPIKeyAuth as Auth

    data = {"model": "other", "messages": [{"role": "user", "content": "hi"}], "metadata": {}}
    data = await env.plugin.async_pre_call_hook(Auth(), None, data, "acompletion")
    await env.router.acompletion(**data)
    await env.settle()
    assert "_dualpool" not in data["metadata"]
    assert env.pool_hits == ["long"]


async def test_a_bare_router_plans_in_the_filter(env) -> None:
    await env.router.acompletion(model="llama", messages=[{"role": "user", "content": "hi"}])
    await env.router.acompletion(model="llama",
                                 messages=[{"role": "user", "content": text_of(SHORT_LEN * 5)}])
    await env.settle()
    assert env.pool_hits == ["short", "long"]


class _BrokenCalibrator(Calibrator):
    def observe(self, key: Any, shape: Any, prompt_tokens: int) -> bool:
        raise RuntimeError("broken on purpose")


async def test_a_failing_hook_never_fails_the_request(make_env) -> None:
    env = make_env()
    broken = _BrokenCalibrator()
    env.plugin.engine.calibrator = broken
    env.plugin.engine.estimator.calibrator = broken
    env.plugin.engine.store.learner.calibrator = broken  # learning goes through the state store
    response, _ = await env.call("hello", max_tokens=8)
    assert response.choices[0].message.content == "ok"
    await env.settle(lambda: env.metric("dualpool_callback_errors_total", hook="success") == 1)

    def failing_load(group: str, pool: Any) -> float:
        raise RuntimeError("load source down")

    env.plugin.engine.load_source = failing_load
    response, data = await env.call("hello", max_tokens=8)
    assert response.choices[0].message.content == "ok"
    assert env.metric("dualpool_callback_errors_total", hook="pre_call") == 1
    assert "_dualpool" not in data["metadata"]


async def test_strategy_mode_picks_the_least_busy_deployment(make_env) -> None:
    env = make_env({"routing": "strategy"})
    await env.call("hello", max_tokens=8)
    await env.settle()
    assert env.pool_hits == ["short"]
    strategy_picks = env.plugin.engine.inflight
    assert strategy_picks.requests() == 0
    from litellm_dualpool.proxy import DualPoolRoutingStrategy

    strategy = DualPoolRoutingStrategy(env.router, env.plugin)
    a = {"model_info": {"id": "a"}}
    b = {"model_info": {"id": "b"}}
    strategy_picks.open("r1", "llama", "short", "a")
    assert strategy.pick([a, b], {}) is b
    strategy_picks.close("r1")


async def test_in_flight_counts_return_to_zero(env) -> None:
    env.short.mock(side_effect=lambda request: httpx.Response(500, json={"error": "boom"}))
    with pytest.raises(Exception, match="boom"):
        await env.call("hello", max_tokens=8)
    await env.settle()
    env.short.mock(side_effect=lambda request: httpx.Response(200, json=completion_body(3)))
    await env.call("hello", max_tokens=8)
    await env.settle()
    assert env.metric("dualpool_in_flight_requests", model_group="llama", pool="short") == 0
    assert env.plugin.engine.inflight.pool("llama", "short") == 0


async def test_a_tenant_without_long_pool_rights_gets_a_clear_400(env) -> None:
    short_only = UserAPIKeyAuth(metadata={"dualpool_policy": {"allowed_pools": ["short"]}})
    _, data = await env.call("hi", max_tokens=8, user=short_only)
    assert record(data).progress.pool == "short"
    with pytest.raises(ContextLengthExceededError) as caught:
        await env.call("hi", max_tokens=SHORT_LEN + 10, user=short_only)
    await env.settle()
    body = caught.value.to_dict()
    assert (caught.value.code, body["code"]) == ("400", "context_length_exceeded")
    # the policy's own wording stays, after the window this key may use
    assert f"this API key may use on model group 'llama' is {SHORT_LEN} tokens" in body["message"]
    assert "does not allow" in body["message"]
    assert "x-dualpool-budget-tokens" not in caught.value.headers  # a tenant key: not exposed
    assert env.pool_hits == ["short"]
    assert env.metric("dualpool_refusals_total", model_group="llama", reason="not_allowed") == 1


VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="m"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="m"}} {waiting}
"""


async def test_backend_metrics_drive_spillover(make_env) -> None:
    env = make_env({"spillover": {"vllm_metrics": {"enabled": True, "interval_seconds": 60}}})
    env.plugin.prepare(env.router)
    env.mock.get("http://short.vllm.test/metrics").mock(return_value=httpx.Response(
        200, text=VLLM_METRICS.format(running=3, waiting=2)))
    env.mock.get("http://long.vllm.test/metrics").mock(return_value=httpx.Response(
        200, text=VLLM_METRICS.format(running=0, waiting=0)))
    await env.plugin.poller.poll_once()
    _, data = await env.call("hi", max_tokens=8)
    await env.settle()
    assert (record(data).progress.pool, record(data).progress.reason) == (
        "long", "spillover")
    env.mock.get("http://short.vllm.test/metrics").mock(return_value=httpx.Response(
        200, text=VLLM_METRICS.format(running=1, waiting=0)))
    await env.plugin.poller.poll_once()
    _, data = await env.call("hi", max_tokens=8)
    await env.settle()
    assert record(data).progress.pool == "short"
    assert env.pool_hits == ["long", "short"]


async def test_the_strategys_synchronous_path_narrows_and_refuses_like_the_filter(env) -> None:
    """LiteLLM's synchronous routing path goes through the callback's public `narrow`: the
    planned pool, failed deployments avoided, and the plugin's refusal as LiteLLM's 400."""
    from litellm_dualpool.proxy import DualPoolRoutingStrategy

    strategy = DualPoolRoutingStrategy(env.router, env.plugin)
    short = strategy.get_available_deployment(
        "llama", messages=[{"role": "user", "content": "hi"}],
        request_kwargs={"metadata": {}, "max_tokens": 8})
    assert short is not None and short["model_info"]["max_model_len"] == SHORT_LEN
    failed = short["model_info"]["id"]
    retried = strategy.get_available_deployment(
        "llama", messages=[{"role": "user", "content": "hi"}],
        request_kwargs={"metadata": {"previous_models": [{"deployment_id": failed}]},
                        "max_tokens": 8})
    assert retried is not None and retried["model_info"]["id"] != failed  # the long pool
    with pytest.raises(litellm.BadRequestError, match="largest pool"):
        strategy.get_available_deployment(
            "llama", messages=[{"role": "user", "content": "hi"}],
            request_kwargs={"metadata": {}, "max_tokens": LONG_LEN + 100})
