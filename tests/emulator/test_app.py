"""The emulator app in process (httpx's ASGI transport): routes, usage, lengths, errors, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import quicktok

from litellm_dualpool.emulator.app import EmulatorState, ServerSettings, build_app
from litellm_dualpool.emulator.backend import EngineBackend, InstantBackend
from litellm_dualpool.emulator.faults import Faults
from litellm_dualpool.emulator.outputs import OutputLengths
from litellm_dualpool.sim.engine import Engine, EngineConfig

L = 2048
LLAMA = quicktok.get_encoding("llama3")


def _state(backend: Any, *, outputs: str = "fixed:5", names: tuple[str, ...] = ("emu",)) -> EmulatorState:
    settings = ServerSettings(served_model_names=names, max_model_len=L, tokenizer="llama3", seed=1)
    return EmulatorState(settings, backend, Faults(), OutputLengths.parse(outputs))


async def _client(state: EmulatorState) -> AsyncIterator[httpx.AsyncClient]:
    await state.backend.start()
    transport = httpx.ASGITransport(app=build_app(state))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://emu") as client:
            yield client
    finally:
        await state.backend.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(_state(InstantBackend(), names=("emu", "alias"))):
        yield c


def _chat(content: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "emu", "messages": [{"role": "user", "content": content}], **extra}


def _sse(text: str) -> list[Any]:
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def test_models_health_and_aliases(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    data = (await client.get("/v1/models")).json()["data"]
    assert [(m["id"], m["max_model_len"]) for m in data] == [("emu", L), ("alias", L)]
    ok = await client.post("/v1/chat/completions", json={**_chat(), "model": "alias"})
    assert ok.status_code == 200 and ok.json()["model"] == "emu"


async def test_chat_usage_is_exact_and_text_matches_completion_tokens(client: httpx.AsyncClient) -> None:
    content = "Summarise the plot of Hamlet in three sentences, please."
    r = await client.post("/v1/chat/completions", json=_chat(content, max_tokens=40, ignore_eos=True))
    body = r.json()
    rendered = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + content
                + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert body["usage"]["prompt_tokens"] == len(LLAMA.encode(rendered, allowed_special="all"))
    assert body["usage"]["completion_tokens"] == 40
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 40
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(LLAMA.encode(choice["message"]["content"])) == 40


async def test_natural_length_stops_before_max_tokens(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/chat/completions", json=_chat(max_tokens=100))).json()
    assert body["usage"]["completion_tokens"] == 5  # the server's fixed:5 distribution
    assert body["choices"][0]["finish_reason"] == "stop"
    body = (await client.post("/v1/chat/completions", json=_chat(max_tokens=100, min_tokens=9))).json()
    assert body["usage"]["completion_tokens"] == 9


async def test_absent_max_tokens_with_ignore_eos_fills_the_window(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/chat/completions", json=_chat(ignore_eos=True))).json()
    assert body["usage"]["total_tokens"] == L


async def test_current_vllm_lowers_max_tokens_silently(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/chat/completions", json=_chat(max_tokens=L, ignore_eos=True))).json()
    assert body["usage"]["total_tokens"] == L
    assert body["usage"]["completion_tokens"] == L - body["usage"]["prompt_tokens"]


async def test_max_completion_tokens_wins_over_max_tokens(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/chat/completions",
                              json=_chat(max_tokens=50, max_completion_tokens=3, ignore_eos=True))).json()
    assert body["usage"]["completion_tokens"] == 3


async def test_over_length_errors_in_both_formats(client: httpx.AsyncClient) -> None:
    long_text = "word " * (L + 100)
    r = await client.post("/v1/chat/completions", json=_chat(long_text, max_tokens=10))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "input_tokens" and err["code"] == 400 and err["type"] == "BadRequestError"
    assert f"However, your prompt contains at least {L + 1} input tokens" in err["message"]

    r = await client.post("/v1/chat/completions", json=_chat(max_tokens=L + 1))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"

    assert (await client.post("/admin/faults", json={"error_format": "legacy"})).status_code == 200
    r = await client.post("/v1/chat/completions", json=_chat(max_tokens=L))
    body = r.json()
    assert r.status_code == 400 and body["object"] == "error" and body["param"] is None
    assert body["message"] == (
        f"This model's maximum context length is {L} tokens. However, you requested {L + 12} tokens "
        f"(12 in the messages, {L} in the completion). Please reduce the length of the messages or "
        "completion."
    )


async def test_streaming_error_is_plain_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=_chat("word " * (L + 5), stream=True))
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("body", "status"),
    [({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404),
     ({"model": "emu", "messages": "x"}, 400),
     ({"model": "emu", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, 400),
     ({"model": "emu", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, 400),
     ({"model": "emu", "messages": [{"role": "user", "content": "x"}], "n": 0}, 400)],
)
async def test_bad_requests(client: httpx.AsyncClient, body: dict[str, Any], status: int) -> None:
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == status
    assert r.json()["error"]["code"] == status


async def test_invalid_json_is_a_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"


async def test_streaming_chunks_and_final_usage(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=_chat(
        max_tokens=4, ignore_eos=True, stream=True, stream_options={"include_usage": True}))
    chunks = _sse(r.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(content) == 4 and len(LLAMA.encode("".join(content))) == 4
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:-1]] == [None, None, None, "length"]
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


async def test_streaming_without_include_usage_has_no_usage_chunk(client: httpx.AsyncClient) -> None:
    chunks = _sse((await client.post("/v1/chat/completions", json=_chat(max_tokens=2, stream=True))).text)
    assert all("usage" not in c and c["choices"] for c in chunks)


async def test_continuous_usage_stats(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=_chat(
        max_tokens=3, ignore_eos=True, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    chunks = _sse(r.text)
    assert [c["usage"]["completion_tokens"] for c in chunks[1:]] == [1, 2, 3, 3]


async def test_completions_batch_and_n(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={
        "model": "emu", "prompt": ["Once upon a time", [1, 2, 3]], "n": 2, "max_tokens": 3, "ignore_eos": True})
    body = r.json()
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == (len(LLAMA.encode("Once upon a time")) + 1) + 3
    assert body["usage"]["completion_tokens"] == 12


async def test_completions_default_max_tokens_is_16(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/completions", json={"model": "emu", "prompt": "x", "ignore_eos": True})).json()
    assert body["usage"]["completion_tokens"] == 16


async def test_completions_stream_usage(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={
        "model": "emu", "prompt": "abc", "max_tokens": 2, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True}})
    chunks = _sse(r.text)
    assert [c["object"] for c in chunks] == ["text_completion"] * 3
    assert chunks[-1]["usage"]["completion_tokens"] == 2


async def test_no_usage_fault(client: httpx.AsyncClient) -> None:
    await client.post("/admin/faults", json={"no_usage": True})
    assert "usage" not in (await client.post("/v1/chat/completions", json=_chat())).json()
    r = await client.post("/v1/chat/completions", json=_chat(stream=True, stream_options={"include_usage": True}))
    assert all("usage" not in c for c in _sse(r.text))


async def test_error_rate_and_refuse_503(client: httpx.AsyncClient) -> None:
    await client.post("/admin/faults", json={"error_rate": 1.0})
    r = await client.post("/v1/chat/completions", json=_chat())
    assert r.status_code == 500 and r.json()["error"]["type"] == "InternalServerError"
    await client.post("/admin/faults", json={"error_rate": 0.0, "refuse": "503"})
    assert (await client.get("/health")).status_code == 503
    assert (await client.post("/v1/chat/completions", json=_chat())).status_code == 503
    assert (await client.get("/admin/faults")).json()["refuse"] == "503"
    await client.post("/admin/faults", json={"refuse": "none"})
    assert (await client.get("/health")).status_code == 200


async def test_admin_rejects_bad_knobs(client: httpx.AsyncClient) -> None:
    r = await client.post("/admin/faults", json={"error_rate": 3})
    assert r.status_code == 400 and r.json()["error"].startswith("error_rate:")
    assert (await client.post("/admin/faults", content=b"[1]")).status_code == 400


async def test_metrics_move(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json=_chat(max_tokens=7, ignore_eos=True))
    text = (await client.get("/metrics")).text
    assert 'vllm:prompt_tokens_total{engine="0",model_name="emu"} 12.0' in text
    assert 'vllm:generation_tokens_total{engine="0",model_name="emu"} 7.0' in text
    assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="emu"} 1.0' in text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "vllm:num_preemptions_total",
                 "vllm:time_to_first_token_seconds_count"):
        assert name in text


# --- the engine model behind the app ------------------------------------------------------------


@pytest.fixture
async def engine_client() -> AsyncIterator[httpx.AsyncClient]:
    engine = Engine(EngineConfig("a100", "llama-3.1-8b", max_model_len=L, max_num_seqs=4,
                                 max_num_batched_tokens=2048))
    async for c in _client(_state(EngineBackend(engine, speedup=200.0))):
        yield c


async def test_engine_mode_streams_every_token(engine_client: httpx.AsyncClient) -> None:
    r = await engine_client.post("/v1/chat/completions", json=_chat(
        max_tokens=30, ignore_eos=True, stream=True, stream_options={"include_usage": True}))
    chunks = _sse(r.text)
    assert len(chunks) == 1 + 30 + 1
    assert chunks[-1]["usage"] == {"prompt_tokens": 12, "total_tokens": 42, "completion_tokens": 30,
                                   "prompt_tokens_details": None}


async def _gauge(client: httpx.AsyncClient, name: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def _until(client: httpx.AsyncClient, name: str, value: float) -> None:
    for _ in range(500):
        if await _gauge(client, name) == value:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never reached {value}")


async def test_stalled_engine_queues_then_drains(engine_client: httpx.AsyncClient) -> None:
    await engine_client.post("/admin/faults", json={"stall": True})

    async def one() -> int:
        r = await engine_client.post("/v1/chat/completions", json=_chat(max_tokens=20, ignore_eos=True))
        return int(r.json()["usage"]["completion_tokens"])

    tasks = [asyncio.create_task(one()) for _ in range(10)]
    await _until(engine_client, "vllm:num_requests_waiting", 10)
    assert await _gauge(engine_client, "vllm:num_requests_running") == 0
    await engine_client.post("/admin/faults", json={"stall": False})
    assert await asyncio.gather(*tasks) == [20] * 10
    assert await _gauge(engine_client, "vllm:num_requests_running") == 0
    assert await _gauge(engine_client, "vllm:num_requests_waiting") == 0
    assert await _gauge(engine_client, "vllm:kv_cache_usage_perc") == 0


async def test_client_disconnect_aborts_the_engine_request(engine_client: httpx.AsyncClient) -> None:
    await engine_client.post("/admin/faults", json={"stall": True})
    task = asyncio.create_task(engine_client.post("/v1/chat/completions", json=_chat(max_tokens=5)))
    await _until(engine_client, "vllm:num_requests_waiting", 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(engine_client, "vllm:num_requests_waiting", 0)
