"""The emulator as a real process on loopback, driven by the openai client and raw httpx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import quicktok

from litellm_dualpool.emulator.testing import (
    EmulatorStartError,
    RunningEmulator,
    launch_emulator,
    start_emulator,
    start_emulators,
)

pytestmark = pytest.mark.e2e

L = 4096
LLAMA = quicktok.get_encoding("llama3")


@pytest.fixture(scope="module")
def emu() -> Iterator[RunningEmulator]:
    with start_emulator(instant=True, max_model_len=L, served_model_name=["llama-3-70b", "short"],
                        output_len_dist="fixed:8", seed=3) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "emu" in request.fixturenames:
        emu: RunningEmulator = request.getfixturevalue("emu")
        emu.set_faults(error_rate=0, latency_seconds=0, hang_rate=0, drop_rate=0, refuse="none",
                       refuse_seconds=None, stall=False, no_usage=False, error_format="current")


def _client(emu: RunningEmulator, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.openai_base_url, api_key="unused", max_retries=0, timeout=timeout)


def _chat(client: openai.OpenAI, content: str = "What is a KV cache?", **kwargs: Any) -> Any:
    return client.chat.completions.create(model="llama-3-70b", messages=[{"role": "user", "content": content}],
                                          **kwargs)


def _llama3_chat_tokens(content: str) -> int:
    text = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + content.strip()
            + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    return len(LLAMA.encode(text, allowed_special="all"))


def test_chat_usage_matches_the_real_tokenizer(emu: RunningEmulator) -> None:
    content = "Explain paged attention to a new engineer, with one analogy. 日本語も少し。"
    resp = _chat(_client(emu), content, max_tokens=25, extra_body={"ignore_eos": True})
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == _llama3_chat_tokens(content)
    assert resp.usage.completion_tokens == 25
    assert len(LLAMA.encode(resp.choices[0].message.content or "")) == 25
    assert resp.choices[0].finish_reason == "length"


def test_streaming_with_usage(emu: RunningEmulator) -> None:
    stream = _chat(_client(emu), max_tokens=6, stream=True, stream_options={"include_usage": True},
                   extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(LLAMA.encode(text)) == 6
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == _llama3_chat_tokens("What is a KV cache?")


def test_completions_and_models(emu: RunningEmulator) -> None:
    client = _client(emu)
    resp = client.completions.create(model="short", prompt="Once upon a time", max_tokens=50)
    assert resp.usage is not None and resp.usage.prompt_tokens == len(LLAMA.encode("Once upon a time")) + 1
    assert resp.usage.completion_tokens == 8 and resp.choices[0].finish_reason == "stop"
    models = client.models.list().data
    assert [m.id for m in models] == ["llama-3-70b", "short"]
    assert all(m.model_extra and m.model_extra["max_model_len"] == L for m in models)


def test_over_length_error_bodies_current_and_legacy(emu: RunningEmulator) -> None:
    client = _client(emu)
    with pytest.raises(openai.BadRequestError) as info:
        _chat(client, "token " * (L + 10), max_tokens=16)
    error = info.value.response.json()["error"]
    assert error["param"] == "input_tokens" and error["code"] == 400
    assert error["message"].startswith(f"This model's maximum context length is {L} tokens. However, "
                                       f"your prompt contains at least {L + 1} input tokens")
    emu.set_faults(error_format="legacy")
    prompt = _llama3_chat_tokens("What is a KV cache?")
    with pytest.raises(openai.BadRequestError) as info:
        _chat(client, max_tokens=L)
    body = info.value.response.json()
    assert body["object"] == "error" and body["param"] is None
    assert f"you requested {prompt + L} tokens ({prompt} in the messages, {L} in the completion)" in body["message"]


def test_metrics_move(emu: RunningEmulator) -> None:
    def counter(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

    before = emu.metrics_text()
    _chat(_client(emu), max_tokens=3, extra_body={"ignore_eos": True})
    after = emu.metrics_text()
    assert counter(after, "vllm:generation_tokens_total") - counter(before, "vllm:generation_tokens_total") == 3
    assert counter(after, "vllm:request_success_total") - counter(before, "vllm:request_success_total") == 1
    assert 'model_name="llama-3-70b"' in after


def test_error_rate_gives_500(emu: RunningEmulator) -> None:
    emu.set_faults(error_rate=1.0)
    with pytest.raises(openai.InternalServerError):
        _chat(_client(emu))


def test_latency_and_hang_time_out_the_client(emu: RunningEmulator) -> None:
    emu.set_faults(latency_seconds=60)
    with pytest.raises(openai.APITimeoutError):
        _chat(_client(emu, timeout=0.5))
    emu.set_faults(latency_seconds=0, hang_rate=1.0)
    with pytest.raises(openai.APITimeoutError):
        _chat(_client(emu, timeout=0.5))
    emu.set_faults(hang_rate=0.0)
    assert _chat(_client(emu)).choices


def test_dropped_connections(emu: RunningEmulator) -> None:
    emu.set_faults(drop_rate=1.0)
    with pytest.raises(openai.APIConnectionError):
        _chat(_client(emu))
    received = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in _chat(_client(emu), max_tokens=20, stream=True, extra_body={"ignore_eos": True}):
            received.append(chunk)
    assert 1 <= len(received) < 20


def test_refuse_503_then_recover(emu: RunningEmulator) -> None:
    emu.set_faults(refuse="503")
    assert httpx.get(emu.base_url + "/health").status_code == 503
    with pytest.raises(openai.InternalServerError):
        _chat(_client(emu))
    emu.set_faults(refuse="none")
    assert httpx.get(emu.base_url + "/health").status_code == 200


def test_refuse_connections_for_a_while(emu: RunningEmulator) -> None:
    emu.set_faults(refuse="connection", refuse_seconds=1.0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(emu.base_url + "/health", timeout=2)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(emu.base_url + "/health", timeout=2).status_code == 200:
                break
        except httpx.ConnectError:
            time.sleep(0.1)
    assert emu.faults()["refuse"] == "none"
    assert _chat(_client(emu)).choices


def test_no_usage(emu: RunningEmulator) -> None:
    emu.set_faults(no_usage=True)
    assert _chat(_client(emu)).usage is None
    chunks = list(_chat(_client(emu), stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks)


def test_engine_mode_process() -> None:
    with start_emulator(model="llama-3.1-8b", gpu="h100", max_model_len=2048, max_num_seqs=8,
                        speedup=50, served_model_name="llama-3-70b") as emu:
        stream = _chat(_client(emu), max_tokens=40, stream=True, stream_options={"include_usage": True},
                       extra_body={"ignore_eos": True})
        chunks = list(stream)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 40
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 40
        assert 'vllm:num_requests_running{engine="0",model_name="llama-3-70b"} 0.0' in emu.metrics_text()


def test_two_pools_in_parallel() -> None:
    with start_emulators({"instant": True, "max_model_len": 1024},
                         {"instant": True, "max_model_len": 8192, "tokenizer": "qwen3"}) as (short, long):
        assert short.port != long.port
        cards = [httpx.get(e.openai_base_url + "/models").json()["data"][0] for e in (short, long)]
        assert [c["max_model_len"] for c in cards] == [1024, 8192]
        resp = _chat(_client(long), "Hello there", max_tokens=1)
        assert resp.usage is not None and resp.usage.prompt_tokens == 10  # Qwen3 ChatML framing


def test_start_refusing_and_bad_flags() -> None:
    emu = launch_emulator(instant=True, refuse="connection", wait=False)
    try:
        with pytest.raises(httpx.ConnectError):
            httpx.get(emu.base_url + "/health", timeout=2)
    finally:
        emu.stop()
    with pytest.raises(EmulatorStartError, match="output-len-dist"):
        launch_emulator(instant=True, output_len_dist="weird:1")
