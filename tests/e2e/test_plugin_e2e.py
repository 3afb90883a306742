"""The plugin in a real `litellm --config` proxy with two pools of stand-in vLLM backends.

One proxy serves the whole module (it takes 8-16 s to start). The tests run in file order on
purpose: the first one relies on the deliberately wrong cold-start ratio (8 bytes/token, about
twice the truth) to force a misroute; the calibration test then teaches the proxy the real ratio.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import quicktok
from plugin_stack import (
    deployment,
    run_proxy_until_exit,
    start_backend,
    start_proxy,
)

from tests.prometheus_text import sample_value
from tests.shared_prompts import PROMPTS
from tests.shared_prompts import mt_bench_prose as prose

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

SHORT_LEN, LONG_LEN = 2048, 16384
CODE = PROMPTS / "HumanEval.jsonl.gz"
COLD_BYTES_PER_TOKEN = 8.0


def code(n_bytes: int) -> str:
    """Real Python (HumanEval prompts and solutions) joined until `n_bytes`."""
    with gzip.open(CODE, "rt", encoding="utf-8") as file:
        rows = [json.loads(line) for line in file if line.strip()]
    out, i = "", 0
    while len(out.encode()) < n_bytes:
        out += rows[i]["prompt"] + rows[i]["canonical_solution"] + "\n"
        i += 1
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("plugin-e2e")
    with ExitStack() as stack:
        short = stack.enter_context(start_backend("short", SHORT_LEN, logs))
        long = stack.enter_context(start_backend("long", LONG_LEN, logs))
        blind_short = stack.enter_context(start_backend("blind-short", SHORT_LEN, logs, usage=False))
        blind_long = stack.enter_context(start_backend("blind-long", LONG_LEN, logs, usage=False))
        config = {
            "model_list": [deployment("llama", short, hardware="test-cpu"),
                           deployment("llama", long),
                           deployment("blind", blind_short), deployment("blind", blind_long)],
            "litellm_settings": {"callbacks": ["prometheus",
                                               "litellm_dualpool.proxy_handler_instance"]},
            "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
            "dualpool_settings": {
                "default_output_tokens": 64,
                "calibration": {"cold_start_bytes_per_token": COLD_BYTES_PER_TOKEN},
                # One key (the master key) sends everything here: trust it, or the poisoning
                # guard lets a lone normal tenant teach only a few samples a minute.
                "tenancy": {"default_observation_trust": "trusted"},
            },
        }
        proxy = stack.enter_context(start_proxy(config, logs))
        yield {"proxy": proxy, "short": short, "long": long, "blind_short": blind_short,
               "blind_long": blind_long}


def served_by(response: httpx.Response) -> str:
    return response.headers.get("x-litellm-model-api-base", "")


metric = sample_value


def test_a_forced_misroute_is_recovered_without_client_error(stack: dict[str, Any]) -> None:
    proxy, short, long = stack["proxy"], stack["short"], stack["long"]
    # Real counts exceed 2048 tokens; the cold 8 bytes/token guesses ~1600: sent short. Each
    # rejection teaches its category, so the streamed one uses another category (code).
    text = prose(10_000)
    before = short.stats()["rejected"]
    counted = proxy.metrics()
    recovered_before = metric(counted, "dualpool_misroutes_recovered_total", model_group="llama",
                              from_pool="short", to_pool="long")
    misroutes_before = metric(counted, "dualpool_misroutes_total", model_group="llama",
                              pool="short")
    response = proxy.chat("llama", text, max_tokens=16)
    assert response.status_code == 200, response.text
    assert served_by(response) == long.api_base
    assert response.headers["x-dualpool-pool"] == "long"
    assert response.json()["choices"][0]["message"]["content"] == "ok"
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers=proxy.headers, timeout=60,
                      json={"model": "llama", "stream": True, "max_tokens": 16,
                            "messages": [{"role": "user", "content": code(10_000)}]}) as stream:
        assert stream.status_code == 200
        assert served_by(stream) == long.api_base
        body = "".join(stream.iter_text())
    assert '"content":"ok"' in body.replace(" ", "") and "[DONE]" in body
    assert short.stats()["rejected"] == before + 2
    metrics = proxy.metrics()
    assert metric(metrics, "dualpool_misroutes_recovered_total", model_group="llama",
                  from_pool="short", to_pool="long") == recovered_before + 2
    assert metric(metrics, "dualpool_misroutes_total", model_group="llama",
                  pool="short") == misroutes_before + 2


def test_the_learned_ratio_converges_to_the_backend_tokenizer(stack: dict[str, Any]) -> None:
    """From a cold start twice too high, ~60 real prompts bring the ratio within 5% of what the
    backend's tokenizer (Llama-3) gives on the same text, and the budgets the proxy then
    announces are close to the real prompt. These requests are far from both limits: their
    budget is the bytes-only estimate (the far tier: no character counts), within ~10% once
    learned (it decides only when its whole +/-30% range lands in one pool)."""
    proxy = stack["proxy"]
    encoding = quicktok.get_encoding("llama3")
    texts = [prose(600 + 110 * i, offset=3 * i) for i in range(60)]
    for text in texts:
        assert proxy.chat("llama", text, max_tokens=8).status_code == 200
    true_ratio = sum(len(t.encode()) for t in texts) / sum(len(encoding.encode(t)) for t in texts)
    learned = metric(proxy.metrics(), "dualpool_learned_bytes_per_token", model_group="llama",
                     category="prose")
    assert learned == pytest.approx(true_ratio, rel=0.05)
    for i in range(5):
        text = prose(3000 + 500 * i, offset=5 + 7 * i)
        response = proxy.chat("llama", text, max_tokens=8)
        real = response.json()["usage"]["prompt_tokens"]
        estimated = int(response.headers["x-dualpool-budget-tokens"]) - 8
        assert real * 0.9 <= estimated <= real * 1.25, (real, estimated)
        assert response.headers["x-dualpool-pool"] == "short"


def test_short_and_long_requests_land_in_their_pools(stack: dict[str, Any]) -> None:
    proxy, short, long = stack["proxy"], stack["short"], stack["long"]
    small = proxy.chat("llama", "What is the capital of France?", max_tokens=32)
    assert (served_by(small), small.headers["x-dualpool-pool"]) == (short.api_base, "short")
    big = proxy.chat("llama", prose(30_000), max_tokens=32)  # ~6500 tokens
    assert (served_by(big), big.headers["x-dualpool-pool"]) == (long.api_base, "long")
    assert int(big.headers["x-dualpool-budget-tokens"]) > SHORT_LEN
    borderline = proxy.chat("llama", prose(10_000), max_tokens=16)  # now estimated right
    assert served_by(borderline) == long.api_base


def test_max_tokens_counts_in_the_budget(stack: dict[str, Any]) -> None:
    proxy, long = stack["proxy"], stack["long"]
    response = proxy.chat("llama", "Say hi.", max_tokens=SHORT_LEN)
    assert served_by(response) == long.api_base
    response = proxy.chat("llama", "Say hi.", max_completion_tokens=SHORT_LEN)
    assert served_by(response) == long.api_base


def test_streaming_is_served_and_learned_from(stack: dict[str, Any]) -> None:
    proxy, short = stack["proxy"], stack["short"]
    learned_before = metric(proxy.metrics(), "dualpool_learning_samples_total",
                            model_group="llama", outcome="learned")
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers=proxy.headers, timeout=60,
                      json={"model": "llama", "stream": True, "max_tokens": 16,
                            "messages": [{"role": "user", "content": prose(900, 11)}]}) as stream:
        assert stream.status_code == 200
        assert served_by(stream) == short.api_base
        assert stream.headers["x-dualpool-pool"] == "short"
        body = "".join(stream.iter_text())
    assert "[DONE]" in body
    learned_after = metric(proxy.metrics(), "dualpool_learning_samples_total",
                           model_group="llama", outcome="learned")
    assert learned_after == learned_before + 1


def test_a_request_larger_than_every_pool_gets_a_clear_400(stack: dict[str, Any]) -> None:
    proxy = stack["proxy"]
    requests_before = stack["short"].stats()["requests"] + stack["long"].stats()["requests"]
    refused = metric(proxy.metrics(), "dualpool_refusals_total", model_group="llama",
                     reason="fits_nowhere")
    response = proxy.chat("llama", "Say hi.", max_tokens=LONG_LEN + 100)
    assert response.status_code == 400
    error = response.json()["error"]
    # OpenAI's context-length error, which client code already handles
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "context_length_exceeded", None)
    message = error["message"]
    assert message.startswith(f"This model's maximum context length is {LONG_LEN} tokens.")
    budget = re.search(r"needs an estimated (\d+) tokens", message)
    assert budget and int(budget.group(1)) > LONG_LEN
    # no pool was involved; the master key's policy exposes the budget
    assert response.headers["x-dualpool-budget-tokens"] == budget.group(1)
    assert "x-dualpool-pool" not in response.headers
    assert stack["short"].stats()["requests"] + stack["long"].stats()["requests"] == requests_before
    assert metric(proxy.metrics(), "dualpool_refusals_total", model_group="llama",
                  reason="fits_nowhere") == refused + 1


def test_a_request_over_every_pool_only_by_the_margin_is_served(stack: dict[str, Any]) -> None:
    """The conservative estimate puts it over the long pool, but it fits: the long backend
    serves it instead of the plugin refusing it on an estimate."""
    proxy, long = stack["proxy"], stack["long"]
    borderline = metric(proxy.metrics(), "dualpool_requests_total", model_group="llama",
                        pool="long", reason="borderline")
    text = prose(12_000, offset=21)
    first = proxy.chat("llama", text, max_tokens=8)
    real = first.json()["usage"]["prompt_tokens"]
    again = proxy.chat("llama", text, max_tokens=8)  # the estimate after learning this text
    assert int(again.headers["x-dualpool-budget-tokens"]) - 8 > real  # conservative: above the truth
    response = proxy.chat("llama", text, max_tokens=LONG_LEN - real)  # exactly the long window
    assert response.status_code == 200, response.text
    assert int(response.headers["x-dualpool-budget-tokens"]) > LONG_LEN
    assert (served_by(response), response.headers["x-dualpool-pool"]) == (long.api_base, "long")
    assert response.json()["usage"]["prompt_tokens"] == real
    assert metric(proxy.metrics(), "dualpool_requests_total", model_group="llama", pool="long",
                  reason="borderline") == borderline + 1


def test_a_max_tokens_that_overflows_only_with_the_prompt_is_left_to_the_backend(
        stack: dict[str, Any]) -> None:
    """Prompt + max_tokens is over every pool, but the prompt fits: current vLLM would lower
    max_tokens and serve it (tests/realvllm), so the plugin sends it to the long pool. This
    backend, like older vLLM, refuses it: the client gets a 400 naming both, not LiteLLM's 429."""
    proxy, long = stack["proxy"], stack["long"]
    metrics = proxy.metrics()
    borderline = metric(metrics, "dualpool_requests_total", model_group="llama", pool="long", reason="borderline")
    refused = metric(metrics, "dualpool_refusals_total", model_group="llama", reason="fits_nowhere")
    long_before = long.stats()["requests"]
    response = proxy.chat("llama", prose(4_000, offset=31), max_tokens=LONG_LEN - 10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "context_length_exceeded")
    message = error["message"]
    assert message.startswith(f"This model's maximum context length is {LONG_LEN} tokens.")
    assert "rejected the request for its context length" in message and "no larger pool" in message
    assert "dualpool-recovery" not in response.text
    assert response.headers["x-dualpool-pool"] == "long"
    assert int(response.headers["x-dualpool-budget-tokens"]) > LONG_LEN
    assert long.stats()["requests"] == long_before + 1
    metrics = proxy.metrics()
    assert metric(metrics, "dualpool_requests_total", model_group="llama", pool="long",
                  reason="borderline") == borderline + 1
    assert metric(metrics, "dualpool_refusals_total", model_group="llama", reason="fits_nowhere") == refused + 1
    # the largest pool's rejection is a refusal, not a misroute: nothing could serve it
    assert metric(metrics, "dualpool_misroutes_total", model_group="llama", pool="long") == 0
    for pool in ("short", "long"):
        assert metric(metrics, "dualpool_in_flight_requests", model_group="llama", pool=pool) == 0


def test_backends_without_usage_teach_nothing(stack: dict[str, Any]) -> None:
    proxy = stack["proxy"]
    assert proxy.chat("blind", prose(700), max_tokens=8).status_code == 200
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers=proxy.headers, timeout=60,
                      json={"model": "blind", "stream": True, "max_tokens": 8,
                            "messages": [{"role": "user", "content": prose(800)}]}) as stream:
        assert stream.status_code == 200
        "".join(stream.iter_text())
    metrics = proxy.metrics()
    assert metric(metrics, "dualpool_learning_samples_total", model_group="blind",
                  outcome="no_backend_usage") == 2
    assert metric(metrics, "dualpool_learning_samples_total", model_group="blind",
                  outcome="learned") == 0
    assert "dualpool_learned_bytes_per_token{" not in "\n".join(
        line for line in metrics.splitlines() if 'model_group="blind"' in line)


def test_metrics_and_model_list(stack: dict[str, Any]) -> None:
    proxy = stack["proxy"]
    metrics = proxy.metrics()
    assert metric(metrics, "dualpool_requests_total", model_group="llama", pool="short",
                  reason="fits") > 0
    # a request is counted once, at its first decision; its recovery hop only as a recovery
    assert metric(metrics, "dualpool_misroutes_recovered_total", model_group="llama",
                  to_pool="long") > 0
    assert 'reason="misroute_recovery"' not in metrics
    assert metric(metrics, "dualpool_decision_seconds_count") > 0
    assert metric(metrics, "dualpool_prompt_tokens_estimate_error_ratio_count",
                  model_group="llama", category="prose") > 0
    assert metric(metrics, "dualpool_in_flight_requests", model_group="llama", pool="short") == 0
    assert metric(metrics, "dualpool_callback_errors_total") == 0
    models = httpx.get(proxy.url + "/v1/models", headers=proxy.headers, timeout=10).json()
    names = {m["id"] for m in models["data"]}
    assert {"llama", "blind"} <= names and not any("recovery" in n for n in names)


@pytest.mark.parametrize(("discovery", "words"), [
    ({"enabled": False}, ["model_list[1].model_info.max_model_len", "discovery is off"]),
    # the limit would be read from the backend, which is down: no two pools, no start
    ({}, ["cannot form two pools", "model_list[1] ('g', 'm' at http://127.0.0.1:9/v1/models)"]),
], ids=["discovery-off", "backend-down"])
def test_an_invalid_config_stops_the_proxy_at_start(tmp_path: Path, discovery: dict[str, Any],
                                                    words: list[str]) -> None:
    config = {
        "model_list": [{"model_name": "g", "litellm_params": {"model": "hosted_vllm/m",
                                                              "api_base": "http://127.0.0.1:9/v1"},
                        "model_info": {"max_model_len": 4096}},
                       {"model_name": "g", "litellm_params": {"model": "hosted_vllm/m",
                                                              "api_base": "http://127.0.0.1:9/v1"}}],
        "litellm_settings": {"callbacks": ["litellm_dualpool.proxy_handler_instance"]},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
        "dualpool_settings": {"discovery": discovery},
    }
    code, output = run_proxy_until_exit(config, tmp_path)
    assert code not in (None, 0)
    for text in words:
        assert text in output
