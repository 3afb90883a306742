"""Arbitration in the proxy's pre-call hook, in process (a real litellm.Router, respx for the
backends): the smaller pool's /tokenize count decides before the pool is chosen, and an
arbitration that breaks unexpectedly leaves the estimate's plan (the request goes on)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.proxy.plugin_env import SHORT_BASE, SHORT_LEN, Env, tokens_of

pytestmark = pytest.mark.litellm_compat

TOKENIZE = SHORT_BASE.removesuffix("/v1") + "/tokenize"
MAX_TOKENS = 64
#: ~3500 tokens for the mocked backends (4 bytes each): estimated 0.76x-1.24x by a cold
#: calibrator, so its conservative budget is over the 4096-token short pool, its optimistic
#: one under it: ambiguous. The exact budget (~3570) fits the short pool.
TEXT = "word " * 2800


def with_router(env: Env) -> Env:
    env.plugin.router_provider = lambda: env.router
    return env


async def test_the_short_pools_count_sends_an_ambiguous_request_short(make_env: Any) -> None:
    env = with_router(make_env())
    asked: list[dict[str, Any]] = []

    def tokenize(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.append(body)
        count = tokens_of(request)
        return httpx.Response(200, json={"count": count, "max_model_len": SHORT_LEN,
                                         "tokens": list(range(count))})

    env.mock.post(TOKENIZE).mock(side_effect=tokenize)
    response, data = await env.call(TEXT, max_tokens=MAX_TOKENS)
    await env.settle()
    record = data["metadata"]["_dualpool"]
    assert (record.plan.tier.value, record.plan.count.value) == ("ambiguous", "arbitrated")
    assert env.pool_hits == ["short"]
    assert asked[0]["add_generation_prompt"] is True and asked[0]["model"] == "m"
    assert env.metric("dualpool_arbitrations_total", model_group="llama", outcome="exact") == 1
    headers = await env.plugin.async_post_call_response_headers_hook(data, None, response)
    assert headers is not None and headers["x-dualpool-count"] == "arbitrated"


async def test_a_broken_arbitration_leaves_the_estimates_plan(make_env: Any) -> None:
    env = with_router(make_env())
    env.mock.post(TOKENIZE).mock(side_effect=RuntimeError("unexpected"))
    response, data = await env.call(TEXT, max_tokens=MAX_TOKENS)
    await env.settle()
    assert response.choices[0].message.content == "ok"
    record = data["metadata"]["_dualpool"]
    assert (record.plan.tier.value, record.plan.count.value) == ("ambiguous", "estimated")
    assert env.pool_hits == ["long"]  # the conservative estimate decided
    assert env.metric("dualpool_callback_errors_total", hook="arbitration") == 1
