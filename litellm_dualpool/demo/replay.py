"""Send the workload through the gateway with the openai client and record what happened.

Open loop: each request is sent at its arrival time (bounded by ``concurrency`` requests in
flight, which this machine can sustain), with ``ignore_eos`` so the backend generates exactly
``max_tokens`` tokens, as the Azure traces were replayed by their authors. The client never
retries (``max_retries=0``): a request LiteLLM could not serve shows up as lost instead of being
hidden by a client-side retry.

Each outcome is one of: ``ok`` (answered, with the backend's usage), ``refused`` (the plugin's
400 for a request that truly exceeds every pool), ``lost`` (anything else, including a refusal
of a request that would have fitted). The serving backend comes from LiteLLM's
``x-litellm-model-api-base`` response header, mapped to its pool when the backends are known,
else the plugin's ``x-dualpool-pool`` header names the pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import openai

from litellm_dualpool.demo.workload import Kind, RequestSpec

#: a request longer than this is lost (long prompts at low speed-up take seconds, not minutes)
REQUEST_TIMEOUT_SECONDS = 180.0
#: LiteLLM's header naming the deployment's api_base that served a request
API_BASE_HEADER = "x-litellm-model-api-base"
#: the plugin's header naming the pool it chose (used when the backends are not known)
POOL_HEADER = "x-dualpool-pool"


class Status(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one request (latency from send to the last byte)."""

    spec: RequestSpec
    status: Status
    pool: str | None
    api_base: str | None
    latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    error: str | None = None


BodyFactory = Callable[[RequestSpec], dict[str, Any]]


def _is_refusal(exc: Exception) -> bool:
    """The plugin's up-front refusal: a 400 that names the budget and the largest pool."""
    if not isinstance(exc, openai.BadRequestError):
        return False
    text = str(exc).lower()
    return "max_model_len" in text or "largest pool" in text or "litellm-dualpool" in text


class Replayer:
    """Replays specs against ``base_url`` (the proxy's OpenAI root, ending in ``/v1``)."""

    def __init__(self, base_url: str, api_key: str, bodies: BodyFactory, *,
                 pool_of_api_base: Mapping[str, str] | None = None, concurrency: int = 16,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                          timeout=REQUEST_TIMEOUT_SECONDS)
        self._bodies = bodies
        self._pools = {base.rstrip("/"): pool for base, pool in (pool_of_api_base or {}).items()}
        self._limit = asyncio.Semaphore(concurrency)
        self._on_outcome = on_outcome

    async def run(self, specs: Sequence[RequestSpec]) -> list[Outcome]:
        start = time.monotonic()
        tasks = [asyncio.create_task(self._at(spec, start)) for spec in specs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await self._client.close()

    async def _at(self, spec: RequestSpec, start: float) -> Outcome:
        delay = start + spec.arrival_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        async with self._limit:
            outcome = await self.send(spec)
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        return outcome

    async def send(self, spec: RequestSpec) -> Outcome:
        body = self._bodies(spec)
        sent = time.monotonic()
        try:
            if spec.stream:
                headers, usage = await self._stream(body)
            else:
                headers, usage = await self._plain(body)
        except Exception as exc:  # every failure is an outcome; none may escape the replay
            status = (Status.REFUSED if _is_refusal(exc) and spec.kind is Kind.OVERSIZE
                      else Status.LOST)
            return Outcome(spec, status, None, None, time.monotonic() - sent, None, None,
                           f"{type(exc).__name__}: {exc}"[:500])
        latency = time.monotonic() - sent
        api_base = headers.get(API_BASE_HEADER)
        pool = self._pools.get((api_base or "").rstrip("/")) or headers.get(POOL_HEADER)
        prompt, completion = usage
        if prompt is None:
            return Outcome(spec, Status.LOST, pool, api_base, latency, None, None,
                           "the response carried no usage")
        return Outcome(spec, Status.OK, pool, api_base, latency, prompt, completion)

    async def _plain(self, body: dict[str, Any]) -> tuple[Mapping[str, str], tuple[int | None, int | None]]:
        raw = await self._client.chat.completions.with_raw_response.create(
            **body, extra_body={"ignore_eos": True})
        completion = raw.parse()
        usage = completion.usage
        return raw.headers, (
            (usage.prompt_tokens, usage.completion_tokens) if usage else (None, None))

    async def _stream(self, body: dict[str, Any]) -> tuple[Mapping[str, str], tuple[int | None, int | None]]:
        raw = await self._client.chat.completions.with_raw_response.create(
            **body, extra_body={"ignore_eos": True})
        stream = raw.parse()
        prompt: int | None = None
        completion: int | None = None
        async for chunk in stream:
            if chunk.usage is not None:
                prompt, completion = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
        return raw.headers, (prompt, completion)
