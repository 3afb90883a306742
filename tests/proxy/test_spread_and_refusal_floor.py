"""The learned spread on /metrics, and the refusal floor once a key's spread is wide, against a real litellm.Router with respx standing in for the two pools."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from plugin_env import completion_body

from litellm_dualpool.core.calibration import CategoryKey
from litellm_dualpool.proxy.client_errors import ContextLengthExceededError

pytestmark = [pytest.mark.litellm_compat, pytest.mark.asyncio(loop_scope="module")]

SPREAD = "dualpool_learned_spread_ratio"
NINE_MB = 9 * 1024 * 1024
DRAG = {"dualpool": {"category": "drag"}}
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank. "


def tools(description_bytes: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {
        "name": "lookup", "description": "a" * description_bytes,
        "parameters": {"type": "object", "properties": {}}}}]


def byte_per_token_backend(hits: list[str]) -> Any:
    """A backend whose tokenizer spells the text about byte by byte (1.1 bytes/token): far from
    the cold 4.0, so every prediction is off by ~2.6x and the spread widens."""
    def respond(request: httpx.Request) -> httpx.Response:
        hits.append("backend")
        size = len(request.content)
        return httpx.Response(200, json=completion_body(int(size / 1.1) + 10))
    return respond


async def test_the_learned_spread_is_exported_per_key(env) -> None:
    key = CategoryKey("llama", "drag")
    assert env.registry.get_sample_value(SPREAD, {"model_group": "llama",
                                                  "category": "drag"}) is None
    for _ in range(3):
        await env.call(SENTENCE * 20, max_tokens=16, metadata={**DRAG})
    await env.settle()
    assert env.metric("dualpool_learning_samples_total", model_group="llama",
                      outcome="learned") == 3
    exported = env.registry.get_sample_value(SPREAD, {"model_group": "llama", "category": "drag"})
    assert exported is not None  # absent is a failure, not a zero
    assert exported == pytest.approx(env.plugin.engine.calibrator.spread(key))
    assert 0.0 < exported < 1.0


async def test_a_9mb_tools_request_is_refused_after_the_spread_widened(env) -> None:
    hits: list[str] = []
    env.short.mock(side_effect=byte_per_token_backend(hits))
    env.long.mock(side_effect=byte_per_token_backend(hits))
    for _ in range(4):  # within the calibrator's warm-up: accepted, however far off
        await env.call(SENTENCE * 40, max_tokens=16, tools=tools(200), metadata={**DRAG})
    await env.settle()
    spread = env.registry.get_sample_value(SPREAD, {"model_group": "llama", "category": "drag"})
    assert spread is not None and spread > 0.5  # gamma 2: point less the margin is <= 0
    body = {"model": "llama", "max_tokens": 16, "tools": tools(NINE_MB),
            "messages": [{"role": "user", "content": "Which tool fits?"}]}
    estimate = env.plugin.engine.estimator.estimate(body, "llama", category="drag")
    assert 2 * (estimate.budget.prompt_tokens_point or 0) - estimate.budget.prompt_tokens <= 0
    refused_before = env.metric("dualpool_refusals_total", model_group="llama",
                                reason="fits_nowhere")
    served_before = len(hits)
    with pytest.raises(ContextLengthExceededError) as refused:
        await env.call("Which tool fits?", max_tokens=16, tools=tools(NINE_MB),
                       metadata={**DRAG})
    assert refused.value.code == "400"
    assert "llama" in json.dumps(refused.value.to_dict())
    assert len(hits) == served_before  # no backend saw it
    assert env.metric("dualpool_refusals_total", model_group="llama",
                      reason="fits_nowhere") == refused_before + 1
