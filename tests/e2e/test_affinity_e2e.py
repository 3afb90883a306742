"""Conversation affinity through a real `litellm --config` proxy with stand-in vLLM pools: a
conversation whose first turn went long keeps going long for a turn that alone fits short; a
different conversation still goes short; a pin expires; LiteLLM's session id names a
conversation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from plugin_stack import deployment, start_backend, start_proxy

from tests.prometheus_text import sample_value
from tests.shared_prompts import mt_bench_prose as prose

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

SHORT_LEN, LONG_LEN = 2048, 16384
#: Long enough for a test's turns to come back within it on a loaded machine, short enough to
#: wait out once.
TTL_SECONDS = 8.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("affinity-e2e")
    with ExitStack() as stack:
        short = stack.enter_context(start_backend("short", SHORT_LEN, logs))
        long = stack.enter_context(start_backend("long", LONG_LEN, logs))
        config = {
            "model_list": [deployment("llama", short), deployment("llama", long)],
            "litellm_settings": {"callbacks": ["prometheus",
                                               "litellm_dualpool.proxy_handler_instance"]},
            "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
            "dualpool_settings": {"affinity": {"ttl_seconds": TTL_SECONDS}},
        }
        proxy = stack.enter_context(start_proxy(config, logs))
        yield {"proxy": proxy, "short": short, "long": long}


def send(stack: dict[str, Any], messages: list[dict[str, str]], max_tokens: int,
         headers: dict[str, str] | None = None) -> str:
    """The pool that served the request, checked against the backend LiteLLM names."""
    proxy = stack["proxy"]
    response = httpx.post(proxy.url + "/v1/chat/completions", timeout=60,
                          headers={**proxy.headers, **(headers or {})},
                          json={"model": "llama", "messages": messages, "max_tokens": max_tokens})
    assert response.status_code == 200, response.text
    pool = response.headers["x-dualpool-pool"]
    backend = stack[pool]
    assert response.headers.get("x-litellm-model-api-base") == backend.api_base
    return pool


def turn1(first: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": first}]


def turn2(first: str) -> list[dict[str, str]]:
    return [*turn1(first), {"role": "assistant", "content": "Here is my answer."},
            {"role": "user", "content": "Can you say more?"}]


def affinity(stack: dict[str, Any], outcome: str) -> float:
    return sample_value(stack["proxy"].metrics(), "dualpool_affinity_total", model_group="llama",
                        outcome=outcome)


def test_a_conversation_that_went_long_keeps_going_long(stack: dict[str, Any]) -> None:
    first = prose(3000)  # ~700 tokens: short fits it with a small max_tokens, not with 1500
    held = affinity(stack, "held")
    assert send(stack, turn2(prose(3000, offset=7)), 100) == "short"  # alone, a turn 2 fits short
    assert send(stack, turn1(first), 1500) == "long"
    assert send(stack, turn2(first), 100) == "long"
    assert affinity(stack, "held") - held == 1
    reasons = sample_value(stack["proxy"].metrics(), "dualpool_requests_total",
                           model_group="llama", pool="long", reason="affinity")
    assert reasons >= 1
    # another conversation of the same size is not held
    assert send(stack, turn2(prose(3000, offset=3)), 100) == "short"


def test_a_session_id_names_the_conversation(stack: dict[str, Any]) -> None:
    session = {"x-litellm-session-id": "affinity-e2e-session"}
    assert send(stack, turn1(prose(3000, offset=11)), 1500, session) == "long"
    small = [{"role": "user", "content": "And a short follow-up?"}]
    assert send(stack, small, 50, session) == "long"
    assert send(stack, small, 50) == "short"


def test_a_pin_expires(stack: dict[str, Any]) -> None:
    first = prose(3000, offset=5)
    expired = affinity(stack, "expired")
    assert send(stack, turn1(first), 1500) == "long"
    time.sleep(TTL_SECONDS + 1.0)
    assert send(stack, turn2(first), 100) == "short"
    assert affinity(stack, "expired") - expired == 1
