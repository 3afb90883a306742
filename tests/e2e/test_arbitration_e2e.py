"""Arbitration through a real `litellm --config` proxy with emulated vLLM servers: a request
whose estimates straddle the short pool's limit is counted by the short pool's own /tokenize
(exact count wins); a slow /tokenize times out and a server without it (404) is not asked
again, and both fall back to the estimate without failing the request.

One proxy serves three model groups, each with its own short emulator (the arbiter's memory
is per deployment) and one shared long emulator. The calibrator starts cold (spread 0.12,
gamma 2: the optimistic and conservative estimates are ~24% either side of the point), so a
prompt whose exact budget is ~0.9 of the short limit is in the ambiguous band.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from plugin_stack import Proxy, start_proxy

from litellm_dualpool.emulator.testing import RunningEmulator, start_emulator
from litellm_dualpool.tokenize import count_prompt_tokens
from tests.prometheus_text import sample_value
from tests.shared_prompts import mt_bench_prose

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

SHORT_LEN, LONG_LEN = 2048, 16384
MAX_TOKENS = 64
SERVED = "llama-3-70b"
GROUPS = ("exact", "missing", "slow")


def deployment(group: str, emu: RunningEmulator, max_model_len: int) -> dict[str, Any]:
    return {"model_name": group,
            "litellm_params": {"model": f"hosted_vllm/{SERVED}", "api_base": emu.openai_base_url,
                               "api_key": "none"},
            "model_info": {"max_model_len": max_model_len}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("arbitration-e2e")
    with ExitStack() as stack:
        emulators = {name: stack.enter_context(start_emulator(
            model=SERVED, max_model_len=SHORT_LEN, instant=True, tokenizer="llama3"))
            for name in GROUPS}
        long = stack.enter_context(start_emulator(model=SERVED, max_model_len=LONG_LEN,
                                                  instant=True, tokenizer="llama3"))
        emulators["missing"].set_faults(tokenize_missing=True)
        emulators["slow"].set_faults(tokenize_latency_seconds=5.0)
        model_list = [d for name in GROUPS for d in (
            deployment(name, emulators[name], SHORT_LEN), deployment(name, long, LONG_LEN))]
        config = {
            "model_list": model_list,
            "litellm_settings": {"callbacks": ["prometheus",
                                               "litellm_dualpool.proxy_handler_instance"]},
            "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
            "dualpool_settings": {
                "tenancy": {"default_observation_trust": "trusted"},
                "arbitration": {"timeout_ms": 500},
            },
        }
        proxy = stack.enter_context(start_proxy(config, logs))
        yield {"proxy": proxy, "long": long, **emulators}


def band_text(offset: int) -> str:
    """Prose whose exact budget (Llama-3 chat count plus MAX_TOKENS) is ~0.9 of SHORT_LEN."""
    size = 4000
    while True:
        text = mt_bench_prose(size, offset)
        tokens = count_prompt_tokens({"messages": [{"role": "user", "content": text}]}, "llama3")
        if tokens + MAX_TOKENS >= 0.9 * SHORT_LEN:
            return text
        size += 200


def chat(proxy: Proxy, group: str, text: str) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions", headers=proxy.headers, timeout=60,
                      json={"model": group, "max_tokens": MAX_TOKENS,
                            "messages": [{"role": "user", "content": text}]})


def counters(proxy: Proxy, group: str) -> dict[str, float]:
    text = proxy.metrics()
    out = {outcome: sample_value(text, "dualpool_arbitrations_total", model_group=group,
                                 outcome=outcome)
           for outcome in ("exact", "timeout", "error", "unsupported", "skipped_busy",
                           "no_deployment")}
    out["ambiguous"] = sample_value(text, "dualpool_decisions_by_tier_total", model_group=group,
                                    tier="ambiguous")
    out["learned"] = sample_value(text, "dualpool_learning_samples_total", model_group=group,
                                  outcome="learned")
    out["latency_count"] = sample_value(text, "dualpool_arbitration_seconds_count",
                                        model_group=group)
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def served_by(response: httpx.Response) -> str:
    return response.headers.get("x-litellm-model-api-base", "")


def test_the_exact_count_decides_a_request_in_the_band(stack: dict[str, Any]) -> None:
    proxy = stack["proxy"]
    text = band_text(0)
    before = counters(proxy, "exact")
    response = chat(proxy, "exact", text)
    assert response.status_code == 200, response.text
    # the conservative estimate is over the short limit; the exact count fits: short wins
    assert response.headers["x-dualpool-pool"] == "short"
    assert response.headers["x-dualpool-count"] == "arbitrated"
    assert served_by(response) == stack["exact"].openai_base_url
    usage = response.json()["usage"]["prompt_tokens"]
    assert usage + MAX_TOKENS <= SHORT_LEN
    # one exact observation learned (the usage of the same request is not learned again)
    assert delta(counters(proxy, "exact"), before) == {
        "ambiguous": 1, "exact": 1, "learned": 1, "latency_count": 1}


def test_a_server_without_tokenize_falls_back_and_is_not_asked_again(
        stack: dict[str, Any]) -> None:
    proxy = stack["proxy"]
    before = counters(proxy, "missing")
    first = chat(proxy, "missing", band_text(3))
    assert first.status_code == 200, first.text
    assert first.headers["x-dualpool-count"] == "estimated"
    assert first.headers["x-dualpool-pool"] == "long"  # the conservative estimate decided
    middle = counters(proxy, "missing")
    assert delta(middle, before) == {"ambiguous": 1, "unsupported": 1, "learned": 1,
                                     "latency_count": 1}
    second = chat(proxy, "missing", band_text(7))
    assert second.status_code == 200 and second.headers["x-dualpool-count"] == "estimated"
    # the 404 is remembered: no second call (nothing else to ask in that pool)
    changes = delta(counters(proxy, "missing"), middle)
    assert changes.get("no_deployment") == 1 and "unsupported" not in changes
    assert "latency_count" not in changes


def test_a_slow_tokenize_times_out_and_the_estimate_decides(stack: dict[str, Any]) -> None:
    proxy = stack["proxy"]
    before = counters(proxy, "slow")
    response = chat(proxy, "slow", band_text(11))
    assert response.status_code == 200, response.text
    assert response.headers["x-dualpool-count"] == "estimated"
    assert response.headers["x-dualpool-pool"] == "long"
    assert delta(counters(proxy, "slow"), before) == {"ambiguous": 1, "timeout": 1, "learned": 1,
                                                      "latency_count": 1}


def test_far_requests_are_counted_by_tier_and_not_arbitrated(stack: dict[str, Any]) -> None:
    proxy = stack["proxy"]
    before = counters(proxy, "exact")
    far_before = sample_value(proxy.metrics(), "dualpool_decisions_by_tier_total",
                              model_group="exact", tier="far")
    response = chat(proxy, "exact", "Say hello.")
    assert response.status_code == 200
    assert (response.headers["x-dualpool-pool"], response.headers["x-dualpool-count"]) == (
        "short", "estimated")
    assert sample_value(proxy.metrics(), "dualpool_decisions_by_tier_total", model_group="exact",
                        tier="far") == far_before + 1
    assert delta(counters(proxy, "exact"), before) == {"learned": 1}
