"""Context-length rejections and Anthropic messages through a real `litellm` proxy.

Two model groups over stand-in backends (tests/e2e/backend.py): ``llama`` answers vLLM's
current 400s, ``sg`` SGLang's (which LiteLLM 1.106 does not map to a context-window error).
The cold-start ratio (8 bytes/token, about twice the truth) sends prompts that overflow the
short pool there first. One proxy serves the module; the tests read counters as deltas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from plugin_stack import Proxy, deployment, eventually, start_backend, start_proxy
from prometheus_client.parser import text_string_to_metric_families

from tests.shared_prompts import mt_bench_prose as prose

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

SHORT_LEN, LONG_LEN = 2048, 16384
#: vLLM's (legacy) context-length sentence, sent by the client as its `temperature`: the
#: backend's validation 400 quotes it and LiteLLM maps that 400 to ContextWindowExceededError.
FAKE = ("This model's maximum context length is 2048 tokens. However, you requested 5000 tokens "
        "(230 in the messages, 4770 in the completion). Please reduce the length of the "
        "messages or completion.")
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("rejections-e2e")
    with ExitStack() as stack:
        short = stack.enter_context(start_backend("short", SHORT_LEN, logs))
        long = stack.enter_context(start_backend("long", LONG_LEN, logs))
        sg_short = stack.enter_context(start_backend("sg-short", SHORT_LEN, logs,
                                                     error_style="sglang"))
        sg_long = stack.enter_context(start_backend("sg-long", LONG_LEN, logs,
                                                    error_style="sglang"))
        config = {
            "model_list": [deployment("llama", short), deployment("llama", long),
                           deployment("sg", sg_short), deployment("sg", sg_long)],
            "litellm_settings": {"callbacks": ["prometheus",
                                               "litellm_dualpool.proxy_handler_instance"]},
            "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
            "dualpool_settings": {
                "default_output_tokens": 64,
                "calibration": {"cold_start_bytes_per_token": 8.0},
                "tenancy": {"default_observation_trust": "trusted"},
            },
        }
        proxy = stack.enter_context(start_proxy(config, logs))
        yield {"proxy": proxy, "short": short, "long": long, "sg_short": sg_short,
               "sg_long": sg_long}


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of Prometheus text, None when the series is absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def present(text: str, name: str, **labels: str) -> float:
    value = sample(text, name, **labels)
    assert value is not None, f"{name}{labels} is absent"
    return value


def served_by(response: httpx.Response) -> str:
    return response.headers.get("x-litellm-model-api-base", "")


def messages(proxy: Proxy, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/messages", json={"model": "llama", "max_tokens": 32,
                                                        **body},
                      headers=proxy.headers, timeout=60)


def learned(proxy: Proxy, group: str) -> float:
    return sample(proxy.metrics(), "dualpool_learning_samples_total", model_group=group,
                  outcome="learned") or 0.0


def outcomes(proxy: Proxy, group: str) -> float:
    """Learning outcomes of any kind counted for `group` (each finished request adds one)."""
    return sum(s.value for f in text_string_to_metric_families(proxy.metrics())
               for s in f.samples if s.name == "dualpool_learning_samples_total"
               and s.labels.get("model_group") == group)


def test_an_sglang_rejection_is_recovered_on_the_long_pool(stack: dict[str, Any]) -> None:
    proxy, short, long = stack["proxy"], stack["sg_short"], stack["sg_long"]
    rejected = short.stats()["rejected"]
    # 13 KB, ~2,600 real tokens: estimated ~1,640 at the cold ratio, so sent short
    response = proxy.chat("sg", "word " * 2600, max_tokens=16)
    assert response.status_code == 200, response.text
    assert (served_by(response), response.headers["x-dualpool-pool"]) == (long.api_base, "long")
    assert short.stats()["rejected"] == rejected + 1  # SGLang's own 400 came first
    metrics = proxy.metrics()
    assert present(metrics, "dualpool_misroutes_total", model_group="sg", pool="short") == 1
    assert present(metrics, "dualpool_misroutes_recovered_total", model_group="sg",
                   from_pool="short", to_pool="long") == 1


def test_a_quoted_rejection_is_the_backends_400_and_changes_nothing(
        stack: dict[str, Any]) -> None:
    """A 400 that quotes the client's `temperature` is not a rejection: no misroute, no call
    to the long pool, nothing learned; for a small request and for one large enough to have
    overflowed the short pool (there only the backend's error itself tells)."""
    proxy, short, long = stack["proxy"], stack["short"], stack["long"]
    genuine = proxy.chat("llama", prose(10_000, offset=3), max_tokens=16)  # a real misroute
    assert genuine.status_code == 200 and genuine.headers["x-dualpool-pool"] == "long"
    eventually(lambda: learned(proxy, "llama") >= 1)
    before, long_before, invalid_before = proxy.metrics(), long.stats(), short.stats()["invalid"]
    for content in ("Say hi.", prose(4_000, offset=7)):
        response = proxy.chat("llama", content, max_tokens=16, temperature=FAKE)
        assert response.status_code == 400, response.text
        assert "float_parsing" in response.json()["error"]["message"]  # the backend's words
    # a barrier: another group's request, learned from, after both failures' events
    sg_outcomes = outcomes(proxy, "sg")
    assert proxy.chat("sg", "What is the capital of France?", max_tokens=8).status_code == 200
    eventually(lambda: outcomes(proxy, "sg") == sg_outcomes + 1)
    after = proxy.metrics()
    assert short.stats()["invalid"] == invalid_before + 2
    assert long.stats()["requests"] == long_before["requests"]  # the long pool was not called
    for name, labels in [
        ("dualpool_misroutes_total", {"pool": "short"}),
        ("dualpool_misroutes_recovered_total", {"from_pool": "short", "to_pool": "long"}),
        ("dualpool_learned_bytes_per_token", {"category": "prose"}),
        ("dualpool_learning_samples_total", {"outcome": "learned"}),
    ]:
        assert present(after, name, model_group="llama", **labels) == present(
            before, name, model_group="llama", **labels), name
    for outcome in ("rejected", "limited", "untrusted"):
        assert sample(after, "dualpool_learning_samples_total", model_group="llama",
                      outcome=outcome) == sample(before, "dualpool_learning_samples_total",
                                                 model_group="llama", outcome=outcome)


def test_anthropic_tool_result_and_image_blocks_are_served(stack: dict[str, Any]) -> None:
    proxy = stack["proxy"]
    response = messages(proxy, {
        "tools": [{"name": "look", "description": "Looks at a picture.",
                   "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}],
        "messages": [
            {"role": "user", "content": "What is in the picture?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": "picture"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1",
                 "content": [{"type": "text", "text": "a cat on a mat"}, IMAGE]},
                IMAGE, {"type": "text", "text": "And what colour is it?"}]}]})
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "ok"
    # planned by the plugin, both images charged (the one inside the tool result too)
    assert int(response.headers["x-dualpool-budget-tokens"]) > 2 * 1024


def test_a_long_system_prompt_counts_in_the_budget(stack: dict[str, Any]) -> None:
    proxy, short, long = stack["proxy"], stack["short"], stack["long"]
    short_before, long_before = short.stats()["requests"], long.stats()["served"]
    system = prose(20_000, offset=11)  # ~4,500 real tokens: only the long pool holds it
    response = messages(proxy, {"system": [{"type": "text", "text": system}],
                                "messages": [{"role": "user", "content": "Summarise."}]})
    assert response.status_code == 200, response.text
    assert int(response.headers["x-dualpool-budget-tokens"]) > SHORT_LEN
    assert response.headers["x-dualpool-pool"] == "long"
    assert short.stats()["requests"] == short_before  # planned long, not recovered from short
    assert long.stats()["served"] == long_before + 1
