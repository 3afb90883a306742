"""Arbitration: the exact prompt count of an AMBIGUOUS request from the backend's own tokenizer.

When a request's optimistic and conservative estimates lie in different pools (the core's
`Tier.AMBIGUOUS`, with `Plan.arbiter_pool` the smaller one), no bytes-based estimate can be
sure, and guessing costs either a misroute (the short pool rejects it: one more round trip) or
waste (a request that fits the short pool occupies the long one). vLLM answers
``POST /tokenize`` with the count its chat template and tokenizer give (vLLM 0.32,
``vllm/entrypoints/serve/tokenize/protocol.py``: chat ``{model, messages, tools,
add_generation_prompt}`` or completions ``{model, prompt}``; the answer is ``{count,
max_model_len, tokens}``). One deployment of the smaller pool is asked before the pool is
chosen; the count then decides (`core.plan.plan_counted`) and is learned from like a usage
report.

It never fails a request: a timeout, an error, a 404 (a server without the route, remembered
for `unsupported_retry_seconds`), no deployment to ask, or the concurrency cap reached (no
queueing: a full cap means the estimate decides at once) all leave the estimate's plan. Each
outcome is counted in ``dualpool_arbitrations_total``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any

import httpx

from litellm_dualpool.config import ArbitrationConfig
from litellm_dualpool.core.calibration import MAX_PROMPT_TOKENS
from litellm_dualpool.metrics import DualPoolMetrics

logger = logging.getLogger("litellm_dualpool")

#: A deployment whose /tokenize timed out or failed is not asked again for this long (it may be
#: overloaded: the tokenize call would only add to its queue).
ERROR_BACKOFF_SECONDS = 5.0
#: Largest /tokenize answer read (the token ids of a prompt near any pool limit fit easily:
#: 1M tokens of up to 7 digits and a comma).
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class Outcome(StrEnum):
    """How one arbitration ended (the ``outcome`` label)."""

    EXACT = "exact"
    TIMEOUT = "timeout"
    ERROR = "error"
    UNSUPPORTED = "unsupported"
    SKIPPED_BUSY = "skipped_busy"
    NO_DEPLOYMENT = "no_deployment"


def tokenize_url(api_base: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port/tokenize`` (vLLM serves it at the root)."""
    base = api_base.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + "/tokenize"


def tokenize_body(body: Mapping[str, Any], served_model: str | None) -> dict[str, Any] | None:
    """vLLM's /tokenize request for a chat or completions body, or None when it has no such
    form (Responses input, Anthropic blocks, batched or token-id prompts)."""
    out: dict[str, Any] = {} if served_model is None else {"model": served_model}
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        if body.get("system") is not None:  # Anthropic Messages: not vLLM's chat shape
            return None
        out["messages"] = messages
        out["add_generation_prompt"] = True
        tools = body.get("tools")
        if isinstance(tools, list) and tools:
            out["tools"] = tools
        kwargs = body.get("chat_template_kwargs")
        if isinstance(kwargs, Mapping):
            out["chat_template_kwargs"] = dict(kwargs)
        return out
    prompt = body.get("prompt")
    if isinstance(prompt, str) and "messages" not in body:
        out["prompt"] = prompt
        return out
    return None


def parse_count(payload: Any) -> int | None:
    """The prompt count of a /tokenize answer, or None when it is not a valid one: ``count``
    an integer in [1, MAX_PROMPT_TOKENS], equal to ``len(tokens)`` when the ids are there."""
    if not isinstance(payload, Mapping):
        return None
    count = payload.get("count")
    tokens = payload.get("tokens")
    if type(count) is not int or not 0 < count <= MAX_PROMPT_TOKENS:
        return None
    if tokens is not None and (not isinstance(tokens, list) or len(tokens) != count):
        return None
    return count


#: The bytes a compact list of token ids is made of (vLLM writes `[128000,128006,...]`).
_ID_LIST_BYTES = b"0123456789,"


def parse_answer(raw: bytes) -> int | None:
    """`parse_count` of a /tokenize answer's bytes, without decoding its token ids one by one
    (json.loads of the ~7,000 ids of a 32 KB prompt costs ~0.7 ms of the proxy's CPU): when
    the top-level ``tokens`` is a compact list of non-negative integers, its ids are counted
    by their commas and the rest of the answer is parsed as JSON; anything else (whitespace,
    signs, fractions, a leading zero, a nested or repeated ``tokens``) is parsed in full.
    Same result as ``parse_count(json.loads(raw))``; ValueError for a body that is not JSON."""
    start = raw.find(b'"tokens"')
    opening = raw.find(b"[", start) if start >= 0 else -1
    closing = raw.find(b"]", opening) if opening >= 0 else -1
    if closing > 0 and raw[start + 8:opening].strip(b" \t\r\n") == b":":
        ids = raw[opening + 1:closing]
        if not ids.translate(None, _ID_LIST_BYTES) and not (
                ids.startswith((b",", b"0")) or ids.endswith(b",") or b",," in ids
                or b",0" in ids):
            payload = json.loads(raw[:opening + 1] + raw[closing:])
            if isinstance(payload, Mapping) and payload.get("tokens") == []:
                count = parse_count({**payload, "tokens": None})
                ids_count = ids.count(b",") + 1 if ids else 0
                return count if count == ids_count else None
    return parse_count(json.loads(raw))


def _served_model(deployment: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(provider, model name the backend serves) from a deployment's ``litellm_params.model``."""
    model = (deployment.get("litellm_params") or {}).get("model")
    if not isinstance(model, str) or "/" not in model:
        return None, model if isinstance(model, str) else None
    provider, name = model.split("/", 1)
    return provider, name


def _api_key(deployment: Mapping[str, Any]) -> str | None:
    key = (deployment.get("litellm_params") or {}).get("api_key")
    if isinstance(key, str) and key.startswith("os.environ/"):
        key = os.environ.get(key[len("os.environ/"):])
    return key if isinstance(key, str) and key else None


class Arbiter:
    """Asks a deployment's /tokenize, within a timeout and a cap on concurrent calls.

    One per plugin instance (per proxy worker); `clock` is injectable for tests. The HTTP
    client is made on first use, in the proxy's event loop."""

    def __init__(self, settings: ArbitrationConfig, metrics: DualPoolMetrics, *,
                 client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.metrics = metrics
        self._client = client
        self._clock = clock
        self._semaphore: asyncio.Semaphore | None = None
        #: deployment id -> monotonic time before which it is not asked (404s, failures)
        self._avoid: dict[str, float] = {}
        self._turn = itertools.count()

    def eligible(self, deployments: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The deployments that may be asked: of a configured provider, with an api_base, not
        remembered as lacking /tokenize or as recently failing."""
        now = self._clock()
        out = []
        for d in deployments:
            provider, _ = _served_model(d)
            base = (d.get("litellm_params") or {}).get("api_base")
            ident = (d.get("model_info") or {}).get("id")
            if provider not in self.settings.providers or not isinstance(base, str):
                continue
            if isinstance(ident, str) and self._avoid.get(ident, 0.0) > now:
                continue
            out.append(d)
        return out

    async def count(self, model_group: str, deployments: Sequence[Mapping[str, Any]],
                    body: Mapping[str, Any]) -> tuple[Outcome, int | None]:
        """(outcome, exact count or None) from one eligible deployment of `deployments`."""
        candidates = self.eligible(deployments)
        if not candidates:
            return self._count(model_group, Outcome.NO_DEPLOYMENT), None
        deployment = candidates[next(self._turn) % len(candidates)]
        _, served = _served_model(deployment)
        request = tokenize_body(body, served)
        if request is None:
            return self._count(model_group, Outcome.NO_DEPLOYMENT), None
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.settings.max_concurrent)
        if self._semaphore.locked():  # at the cap: the estimate decides now, no queueing
            return self._count(model_group, Outcome.SKIPPED_BUSY), None
        async with self._semaphore:
            started = self._clock()
            outcome, count, backoff = await self._ask(deployment, request)
            self.metrics.arbitration_seconds.labels(model_group).observe(
                self._clock() - started)
        ident = (deployment.get("model_info") or {}).get("id")
        if isinstance(ident, str):
            if outcome is Outcome.UNSUPPORTED:
                self._avoid[ident] = self._clock() + self.settings.unsupported_retry_seconds
            elif backoff:
                self._avoid[ident] = self._clock() + ERROR_BACKOFF_SECONDS
        return self._count(model_group, outcome), count

    def _count(self, model_group: str, outcome: Outcome) -> Outcome:
        self.metrics.arbitrations.labels(model_group, outcome.value).inc()
        return outcome

    async def _ask(self, deployment: Mapping[str, Any],
                   request: dict[str, Any]) -> tuple[Outcome, int | None, bool]:
        """(outcome, count, whether the deployment should be left alone for a while: a
        timeout, a connection failure, a 5xx or a broken answer; not a 4xx, which is about
        this request's body)."""
        if self._client is None:
            self._client = httpx.AsyncClient()
        url = tokenize_url(str((deployment.get("litellm_params") or {})["api_base"]))
        key = _api_key(deployment)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        timeout = self.settings.timeout_ms / 1000.0
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.post(url, json=request, headers=headers,
                                                   timeout=timeout)
                status = response.status_code
                if status == 404:
                    return Outcome.UNSUPPORTED, None, False
                if status != 200 or len(response.content) > MAX_RESPONSE_BYTES:
                    return Outcome.ERROR, None, not 400 <= status < 500
                count = parse_answer(response.content)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome.TIMEOUT, None, True
        except (httpx.HTTPError, ValueError) as error:
            logger.info("litellm-dualpool: /tokenize at %s failed: %s", url, error)
            return Outcome.ERROR, None, True
        return (Outcome.EXACT, count, False) if count is not None else (Outcome.ERROR, None, True)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
