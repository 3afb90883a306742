"""The client's context-length 400 (proxy/client_errors.py): OpenAI's body, and what the post-call
failure hook answers at the end of a recovery (the proxy e2e tests render both through LiteLLM)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import HTTPException
from litellm.proxy._types import ProxyException

from litellm_dualpool.core.plan import RecoveryFailure
from litellm_dualpool.errors import NoPoolFitsError, PoolNotAllowedError
from litellm_dualpool.proxy.client_errors import (
    ContextLengthExceededError,
    no_larger_pool_error,
    refusal_error,
)
from litellm_dualpool.proxy.record import STASH_KEY, PlanRecord
from litellm_dualpool.proxy.rejections import parse_rejection_text

pytestmark = [pytest.mark.litellm_compat]


def test_the_body_carries_openais_code_and_the_status_stays_400() -> None:
    error = ContextLengthExceededError("This model's maximum context length is 8 tokens.",
                                       headers={"x-dualpool-pool": "long"})
    # LiteLLM keeps a failure hook's HTTPException and renders a ProxyException's to_dict()
    assert isinstance(error, HTTPException) and isinstance(error, ProxyException)
    assert type(error).__mro__.index(ProxyException) < type(error).__mro__.index(HTTPException)
    assert (error.code, error.status_code) == ("400", 400)
    assert error.to_dict() == {"message": "This model's maximum context length is 8 tokens.",
                               "type": "invalid_request_error", "param": None,
                               "code": "context_length_exceeded"}
    assert error.headers == {"x-dualpool-pool": "long"}
    assert str(error) == error.message


def test_a_refusal_opens_with_openais_sentence_and_keeps_the_plugins_numbers() -> None:
    error = refusal_error(NoPoolFitsError(model_group="g", budget_tokens=20_000,
                                          largest_limit_tokens=16_384))
    message = error.to_dict()["message"]
    assert message.startswith("This model's maximum context length is 16384 tokens. ")
    assert "needs an estimated 20000 tokens" in message
    # the sentence vLLM and OpenAI write: a gateway in front of this one reads it as a rejection
    rejection = parse_rejection_text(json.dumps({"error": error.to_dict()}))
    assert rejection is not None and rejection.limit_tokens == 16_384


def test_a_policy_refusal_keeps_its_wording() -> None:
    error = refusal_error(PoolNotAllowedError(model_group="g", budget_tokens=5000,
                                              largest_limit_tokens=4096))
    body = error.to_dict()
    assert body["code"] == "context_length_exceeded"
    assert body["message"].startswith(
        "The maximum context length this API key may use on model group 'g' is 4096 tokens. ")
    assert "does not allow" in body["message"] and "5000" in body["message"]


def test_a_recovery_that_ends_for_length_names_both_pools() -> None:
    message = no_larger_pool_error(model_group="g", pool="short", larger_pool="long",
                                   limit_tokens=32_768, budget_tokens=40_000).message
    assert message.startswith("This model's maximum context length is 32768 tokens.")
    assert "pool 'short'" in message and "larger pool 'long'" in message and "40000" in message
    alone = no_larger_pool_error(model_group="g", pool="long", limit_tokens=32_768,
                                 budget_tokens=33_000).message
    assert "no larger pool exists" in alone


def planned(env: Any, **extra: Any) -> PlanRecord:
    """A plan for a small request in the env's `llama` group (the short pool)."""
    from litellm.proxy._types import UserAPIKeyAuth

    data: dict[str, Any] = {"model": "llama", "messages": [{"role": "user", "content": "hi"}],
                            "metadata": {}, **extra}
    return env.plugin.engine.plan(data, env.plugin.engine.groups["llama"],
                                  env.plugin.policy_resolver(UserAPIKeyAuth(), env.plugin.settings))


async def failure_answer(env: Any, record: PlanRecord, text: str) -> Any:
    return await env.plugin.async_post_call_failure_hook(
        {"model": "llama", "metadata": {STASH_KEY: record}}, Exception(text), None)


async def test_the_failure_hook_answers_a_no_larger_pool_refusal_in_openais_shape(env) -> None:
    record = planned(env)
    record.progress.pool = "long"
    record.refusal = NoPoolFitsError(model_group="llama", budget_tokens=17_000,
                                     largest_limit_tokens=16_384)
    recovery = "llama" + env.plugin.settings.recovery.group_suffix
    answer = await failure_answer(env, record, f"litellm.BadRequestError: fallback to {recovery}")
    assert isinstance(answer, ContextLengthExceededError)
    message = answer.to_dict()["message"]
    assert message.startswith("This model's maximum context length is 16384 tokens.")
    assert "pool 'long'" in message and "no larger pool" in message
    assert recovery not in message


async def test_the_failure_hook_answers_a_second_rejection_in_openais_shape(env) -> None:
    record = planned(env)
    record.progress.recovered_from, record.progress.pool = "short", "long"
    record.progress.recovery_failure = RecoveryFailure.CONTEXT
    answer = await failure_answer(env, record, "ContextWindowExceededError: ...")
    assert isinstance(answer, ContextLengthExceededError)
    assert "maximum context length is 16384 tokens" in answer.message
    assert "so did the larger pool 'long'" in answer.message


async def test_other_failures_are_not_context_length_errors(env) -> None:
    record = planned(env)
    assert await failure_answer(env, record, "litellm.BadRequestError: temperature") is None
    record.progress.recovered_from, record.progress.pool = "short", "long"
    record.progress.recovery_failure = RecoveryFailure.ERROR
    answer = await failure_answer(env, record, "boom")
    assert isinstance(answer, HTTPException) and answer.status_code == 503
    assert not isinstance(answer, ContextLengthExceededError)
