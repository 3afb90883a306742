"""Helpers for the in-process plugin tests: a real litellm.Router over two mocked vLLM pools."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import litellm
import respx
from prometheus_client import CollectorRegistry

from litellm_dualpool.proxy import DualPoolCallback
from tests.prometheus_text import family_of

SHORT_BASE, LONG_BASE = "http://short.vllm.test/v1", "http://long.vllm.test/v1"
SHORT_LEN, LONG_LEN = 4096, 16384


def model_list(*, short_len: int = SHORT_LEN, long_len: int = LONG_LEN,
               short_info: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        {"model_name": "llama", "litellm_params": {"model": "hosted_vllm/m", "api_base": SHORT_BASE,
                                                   "api_key": "x"},
         "model_info": {"max_model_len": short_len, "max_num_seqs": 4, **(short_info or {})}},
        {"model_name": "llama", "litellm_params": {"model": "hosted_vllm/m", "api_base": LONG_BASE,
                                                   "api_key": "x"},
         "model_info": {"max_model_len": long_len, "max_num_seqs": 4}},
        {"model_name": "other", "litellm_params": {"model": "hosted_vllm/m", "api_base": LONG_BASE,
                                                   "api_key": "x"}},
    ]


def completion_body(prompt_tokens: int, *, usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "ok"}}]}
    if usage:
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": 1,
                         "total_tokens": prompt_tokens + 1}
    return body


def overlength(limit: int, prompt_tokens: int) -> httpx.Response:
    message = (f"This model's maximum context length is {limit} tokens. However, your prompt "
               f"contains at least {prompt_tokens} input tokens, which exceeds this limit even "
               "without any output tokens. Please reduce the length of the input messages.")
    return httpx.Response(400, json={"error": {"message": message, "type": "BadRequestError",
                                               "param": "input_tokens", "code": 400}})


def tokens_of(request: httpx.Request) -> int:
    """A stand-in tokenizer for the mocked backends: 4 bytes per token plus 5 per message."""
    body = json.loads(request.content)
    return sum(5 + len(str(m.get("content", "")).encode()) // 4 for m in body["messages"]) + 1


@dataclass
class Env:
    plugin: DualPoolCallback
    router: litellm.Router
    mock: respx.MockRouter
    registry: CollectorRegistry
    short: respx.Route
    long: respx.Route
    user: Any = None
    pool_hits: list[str] = field(default_factory=list)

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value: 0 when the labelled sample is not created yet, AssertionError when
        the registry has no such metric at all (a renamed metric must not read as a zero)."""
        families = {f.name for f in self.registry.collect()}
        if not families & set(family_of(name)):
            raise AssertionError(f"metric {name} is not registered")
        return self.registry.get_sample_value(name, labels) or 0.0

    async def call(self, content: str, *, user: Any = None, **extra: Any) -> Any:
        """What the proxy does: its pre-call hook, then the router."""
        from litellm.proxy._types import UserAPIKeyAuth

        data: dict[str, Any] = {"model": "llama", "messages": [{"role": "user", "content": content}],
                                "metadata": {}, **extra}
        data = await self.plugin.async_pre_call_hook(user or UserAPIKeyAuth(), None, data,
                                                     "acompletion")
        return await self.router.acompletion(**data), data

    async def settle(self, condition: Callable[[], bool] = lambda: True) -> None:
        """LiteLLM dispatches its success/failure events as tasks: wait for them to run."""
        for _ in range(1000):
            if condition() and self.plugin.engine.inflight.requests() == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the plugin's events did not settle")


def backend(base: str, limit: int, hits: list[str], name: str, *, usage: bool = True):
    def respond(request: httpx.Request) -> httpx.Response:
        hits.append(name)
        body = json.loads(request.content)
        tokens = tokens_of(request)
        if tokens + (body.get("max_tokens") or 0) > limit:
            return overlength(limit, tokens)
        return httpx.Response(200, json=completion_body(tokens, usage=usage))
    return respond


