"""The emulator's ``POST /tokenize`` (vLLM's shapes): counts equal the usage of the same
request, the token ids match the count, and the fault knobs make it missing or slow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from litellm_dualpool.emulator.app import EmulatorState, ServerSettings, build_app
from litellm_dualpool.emulator.backend import InstantBackend
from litellm_dualpool.emulator.faults import Faults
from litellm_dualpool.emulator.outputs import OutputLengths

L = 4096
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Find a word in the dictionary.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}}]


@pytest.fixture(params=["llama3", "qwen3"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    settings = ServerSettings(served_model_names=("emu",), max_model_len=L,
                              tokenizer=request.param, seed=1)
    state = EmulatorState(settings, InstantBackend(), Faults(), OutputLengths.parse("fixed:3"))
    await state.backend.start()
    transport = httpx.ASGITransport(app=build_app(state))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://emu") as c:
            yield c
    finally:
        await state.backend.stop()


def _messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": text}]


@pytest.mark.parametrize("tools", [None, TOOLS])
async def test_chat_count_equals_the_usage_of_the_same_request(client: httpx.AsyncClient,
                                                              tools: Any) -> None:
    body: dict[str, Any] = {"model": "emu", "messages": _messages("Count me, 1 2 3. 你好！")}
    if tools:
        body["tools"] = tools
    tokenized = await client.post("/tokenize", json={**body, "add_generation_prompt": True})
    assert tokenized.status_code == 200
    data = tokenized.json()
    served = await client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
    assert data["count"] == served.json()["usage"]["prompt_tokens"] > 10
    assert data["max_model_len"] == L
    assert len(data["tokens"]) == data["count"]


async def test_completions_prompt_counts_like_the_completions_route(
        client: httpx.AsyncClient) -> None:
    tokenized = (await client.post("/tokenize", json={"prompt": "Once upon a time"})).json()
    served = await client.post("/v1/completions", json={"model": "emu", "max_tokens": 2,
                                                       "prompt": "Once upon a time"})
    assert tokenized["count"] == served.json()["usage"]["prompt_tokens"]
    assert len(tokenized["tokens"]) == tokenized["count"]


async def test_bad_bodies_and_unknown_models_are_refused(client: httpx.AsyncClient) -> None:
    assert (await client.post("/tokenize", json={"input": "x"})).status_code == 400
    wrong = await client.post("/tokenize", json={"model": "other", "prompt": "x"})
    assert wrong.status_code == 404


async def test_fault_knobs_make_it_missing_and_slow(client: httpx.AsyncClient) -> None:
    changed = await client.post("/admin/faults", json={"tokenize_missing": True,
                                                       "tokenize_latency_seconds": 0.01})
    assert changed.status_code == 200
    missing = await client.post("/tokenize", json={"prompt": "x"})
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    await client.post("/admin/faults", json={"tokenize_missing": False})
    assert (await client.post("/tokenize", json={"prompt": "x"})).status_code == 200
    bad = await client.post("/admin/faults", json={"tokenize_latency_seconds": -1})
    assert bad.status_code == 400 and "tokenize_latency_seconds" in bad.text
