"""Bad input through the real proxy: a corpus of malformed and odd requests over raw HTTP.

Two proxies over the same two emulated pools, one with the plugin and one without, get the same
corpus. Each case states the status a careful gateway gives with the plugin (4xx with a message
when the client is at fault; where LiteLLM 1.106.12 itself answers 5xx and the plugin cannot
see the request, that is recorded as LiteLLM's). The plugin must never answer 5xx where the
bare proxy does not; the proxy must stay healthy; and failed requests must not move the learned
calibration (/metrics before and after).

The module also holds the security checks that need the same proxies: /metrics obeys LiteLLM's
auth setting, the plugin adds no endpoint, no prompt text reaches logs or metrics, and
caller-supplied categories are bounded.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from plugin_stack import Proxy
from reliability_stack import deployment, proxy_config, samples, start_proxies, total

from litellm_dualpool.emulator.testing import start_emulators

pytestmark = [pytest.mark.e2e]

SHORT_LEN, LONG_LEN = 4096, 32768
#: Calibration keys kept at most (the cardinality test sends far more categories than this).
MAX_KEYS = 16
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


@dataclass(frozen=True)
class Case:
    name: str
    body: Any  # bytes are sent as they are; anything else as JSON
    status: int  # what the proxy with the plugin answers
    says: str = ""  # a piece of the error message (4xx)
    path: str = CHAT
    why: str = ""  # for the table in docs/reliability.md


def chat(content: Any = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "llama", "messages": [{"role": "user", "content": content}], **extra}


def parts(*items: dict[str, Any]) -> dict[str, Any]:
    return chat(list(items))


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def nested_object(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def tools(count: int, properties: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {
        "name": f"tool_{i}", "description": "does a thing " * 4,
        "parameters": {"type": "object", "properties": {
            f"p{j}": {"type": "string", "description": "a parameter " * 8}
            for j in range(properties)}}}} for i in range(count)]


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}

# LiteLLM 1.106.12 answers these itself, identically with and without the plugin (its JSON
# parsing or provider transformation fails before or after any hook could help).
LITELLM_5XX = "LiteLLM 1.106.12 answers 500 with or without the plugin"

FAILING: list[Case] = [
    Case("invalid_json", b'{"model": "llama", "messages": [', 400, "Invalid JSON"),
    Case("body_is_array", b"[1, 2, 3]", 500, why=LITELLM_5XX + " (crash before any hook)"),
    Case("body_is_null", b"null", 500, why=LITELLM_5XX + " (crash before any hook)"),
    Case("empty_body", b"", 400, "messages"),
    Case("non_utf8_bytes", b'{"model":"llama","messages":[{"role":"user","content":"\xff\xfe"}]}',
         400, "messages", why="LiteLLM cannot decode the body; its message names the missing messages"),
    Case("lone_surrogate", b'{"model":"llama","messages":[{"role":"user","content":"a\\ud800b"}]}',
         400, "surrogate"),
    Case("missing_model", {"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    Case("model_is_int", {"model": 5, "messages": [{"role": "user", "content": "hi"}]}, 400,
         "model"),
    Case("unknown_model_group", chat(model="no-such-group"), 400, "no-such-group"),
    Case("missing_messages", {"model": "llama"}, 400, "messages"),
    Case("messages_null", {"model": "llama", "messages": None}, 400, "messages"),
    Case("messages_is_string", {"model": "llama", "messages": "hello"}, 400, "must be a list"),
    Case("messages_empty", {"model": "llama", "messages": []}, 400, "messages"),
    Case("message_is_string", {"model": "llama", "messages": ["hello"]}, 400,
         "must be an object"),
    Case("message_without_role", {"model": "llama", "messages": [{"content": "hi"}]}, 400,
         "role", why="the plugin refuses (bare LiteLLM forwards it)"),
    Case("content_is_int", chat(42), 400, "content",
         why="plugin refuses; bare LiteLLM answers 500"),
    Case("content_is_object", chat({"text": "hi"}), 400, "content"),
    Case("content_nested_lists", chat(nested(200)), 400, "content"),
    Case("tool_arguments_nested_500_deep", {"model": "llama", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
            "name": "f", "arguments": nested_object(500)}}]}]}, 400, "nested",
         why="plugin refuses (depth limit)"),
    Case("unknown_part_type", parts({"type": "hologram", "x": 1}), 400, "hologram",
         why="plugin refuses with LiteLLM's own list of part types; bare LiteLLM answers 500"),
    Case("image_part", parts({"type": "text", "text": "see"}, IMAGE), 400, "image_url",
         why="the text-only backend refuses it"),
    Case("audio_part", parts(AUDIO), 400, "input_audio", why="the text-only backend refuses it"),
    Case("max_tokens_negative", chat(max_tokens=-1), 400, "max_tokens"),
    Case("max_tokens_zero", chat(max_tokens=0), 400, "max_tokens"),
    Case("max_tokens_huge", chat(max_tokens=10**12), 400, "litellm-dualpool",
         why="refused by the plugin before any backend call"),
    Case("max_tokens_string", chat(max_tokens="100"), 400, "max_tokens"),
    Case("max_tokens_words", chat(max_tokens="lots"), 400, "max_tokens"),
    Case("max_tokens_float", chat(max_tokens=1.5), 400, "max_tokens"),
    Case("max_tokens_bool", chat(max_tokens=True), 400, "max_tokens"),
    Case("max_completion_tokens_negative", chat(max_completion_tokens=-5), 400,
         "max_completion_tokens"),
    Case("n_negative", chat(n=-1), 400, "n"),
    Case("tools_not_a_list", chat(tools="all"), 400, "tools: must be a list"),
    Case("tools_enormous", chat(tools=tools(60, 60)), 400, "litellm-dualpool",
         why="~400 KB of schemas: refused by the plugin with its estimate"),
    Case("prompt_over_every_pool", chat("word " * 60_000), 400, "largest pool"),
    Case("prompt_10_mb", chat("a" * 10_000_000), 400, "largest pool"),
    Case("stream_over_every_pool", chat("word " * 60_000, stream=True), 400, "largest pool"),
    Case("category_too_long", chat(metadata={"dualpool": {"category": "c" * 65}}), 400,
         "category"),
    Case("completion_token_ids", {"model": "llama", "prompt": [1, 2, 3, 4]}, 500, path=COMPLETIONS,
         why=LITELLM_5XX + " (hosted_vllm text completion cannot map token ids)"),
    Case("completion_token_id_batch", {"model": "llama", "prompt": [[1, 2], [3, 4]]}, 500,
         path=COMPLETIONS, why=LITELLM_5XX + " (same)"),
    Case("completion_negative_token_ids", {"model": "llama", "prompt": [-1, 5]}, 400, "token ids",
         path=COMPLETIONS, why="plugin refuses; bare LiteLLM answers 500"),
    Case("completion_prompt_is_int", {"model": "llama", "prompt": 5}, 400, "prompt",
         path=COMPLETIONS),
    Case("completion_prompt_empty_list", {"model": "llama", "prompt": []}, 400, "prompt",
         path=COMPLETIONS),
]

SUCCEEDING: list[Case] = [
    Case("empty_prompt", chat(""), 200),
    Case("content_null", chat(None), 200),
    Case("unknown_role", {"model": "llama", "messages": [{"role": "wizard", "content": "hi"}]}, 200,
         why="passed on; the backend decides (the emulator accepts it)"),
    Case("n_is_2", chat(n=2, max_tokens=4), 200),
    Case("temperature_string", chat(temperature="hot"), 200, why="the emulator ignores it"),
    Case("stream_string", chat(stream="yes"), 200),
    Case("null_bytes_and_controls", chat("a\u0000b\u0007c\u001b[31m"), 200),
    Case("emoji_and_cjk", chat("😀🚀 日本語のテキスト 中文 " * 50), 200),
    Case("tools_moderate", chat(tools=tools(8, 10)), 200),
    Case("unknown_top_level_field", chat(frobnicate=True), 200),
    Case("forged_plugin_plan", chat(metadata={"_dualpool": {"id": "x", "pool": "long"}}), 200,
         why="a client-sent plan is dropped and replaced"),
    Case("metadata_not_object", chat(metadata="x"), 200),
    Case("category_with_quotes", chat(metadata={"dualpool": {"category": 'a"b\\c'}}), 200),
    Case("completion_text", {"model": "llama", "prompt": "hello", "max_tokens": 4}, 200,
         path=COMPLETIONS),
]


@dataclass
class Stack:
    plugin: Proxy
    bare: Proxy
    statuses: dict[str, tuple[int, int]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("bad-input")
    with start_emulators({"instant": True, "max_model_len": SHORT_LEN},
                         {"instant": True, "max_model_len": LONG_LEN}) as (short, long):
        models = [deployment("llama", short, SHORT_LEN), deployment("llama", long, LONG_LEN)]
        settings = {"calibration": {"max_keys": MAX_KEYS}, "default_output_tokens": 64}
        with start_proxies([proxy_config(models, dualpool_settings=settings),
                            proxy_config(models, plugin=False)], logs) as (plugin, bare):
            yield Stack(plugin, bare, {})


def send(proxy: Proxy, case: Case, client: httpx.Client) -> httpx.Response:
    content = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers = {**proxy.headers, "Content-Type": "application/json"}
    return client.post(proxy.url + case.path, content=content, headers=headers, timeout=60)


def error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


LEARNING = ("dualpool_learned_bytes_per_token", "dualpool_learning_samples_total",
            "dualpool_state_observations_total", "dualpool_prompt_tokens_estimate_error_ratio_count")


def learning_state(proxy: Proxy) -> dict[str, Any]:
    text = proxy.metrics()
    return {name: samples(text, name) for name in LEARNING}


def run_corpus(stack: Stack, cases: list[Case]) -> None:
    """Send every case to both proxies; collect every mismatch, then fail with all of them."""
    wrong: list[tuple[str, int, int, str]] = []
    with httpx.Client() as client:
        for case in cases:
            with_plugin = send(stack.plugin, case, client)
            without = send(stack.bare, case, client)
            stack.statuses[case.name] = (with_plugin.status_code, without.status_code)
            message = error_message(with_plugin) if with_plugin.status_code >= 400 else ""
            ok = (with_plugin.status_code == case.status
                  # The plugin never turns a request into a 5xx: without it, the same or worse.
                  and (with_plugin.status_code < 500 or without.status_code >= 500)
                  # A client error says what is wrong.
                  and (not 400 <= with_plugin.status_code < 500
                       or (message and case.says.lower() in message.lower())))
            if not ok:
                wrong.append((case.name, with_plugin.status_code, without.status_code,
                              message[:300]))
    if wrong:
        pytest.fail("\n".join(map(repr, wrong)))


def test_every_client_error_case_names_what_its_message_must_say() -> None:
    silent = [c.name for c in FAILING + SUCCEEDING if 400 <= c.status < 500 and not c.says]
    assert silent == []


def test_corpus_is_large_enough() -> None:
    names = [c.name for c in FAILING + SUCCEEDING]
    assert len(names) >= 40 and len(set(names)) == len(names)


def test_failed_requests_get_clear_errors_and_do_not_move_calibration(stack: Stack) -> None:
    before = learning_state(stack.plugin)
    run_corpus(stack, FAILING)
    assert learning_state(stack.plugin) == before


def test_odd_but_valid_requests_are_served(stack: Stack) -> None:
    run_corpus(stack, SUCCEEDING)
    n2 = httpx.post(stack.plugin.url + CHAT, json=chat(n=2, max_tokens=4),
                    headers=stack.plugin.headers, timeout=60)
    assert len(n2.json()["choices"]) == 2
    assert n2.headers["x-dualpool-pool"] == "short"


def test_proxy_is_healthy_after_the_corpus(stack: Stack) -> None:
    assert httpx.get(stack.plugin.url + "/health/liveliness", timeout=10).status_code == 200
    response = stack.plugin.chat("llama", "still there?", max_tokens=4)
    assert response.status_code == 200, response.text
    text = stack.plugin.metrics()
    assert total(text, "dualpool_callback_errors_total") == 0
    assert total(text, "dualpool_in_flight_requests") == 0


def test_the_plugin_never_made_a_5xx(stack: Stack) -> None:
    assert len(stack.statuses) == len(FAILING) + len(SUCCEEDING)
    made = [name for name, (with_plugin, without) in stack.statuses.items()
            if with_plugin >= 500 > without]
    assert made == []
    Path(stack.plugin.log.parent / "statuses.json").write_text(json.dumps(stack.statuses))


# -- security ---------------------------------------------------------------------------------
def test_metrics_require_the_key_when_litellm_says_so(stack: Stack) -> None:
    for proxy in (stack.plugin, stack.bare):
        refused = httpx.get(proxy.url + "/metrics/", timeout=10, follow_redirects=True)
        assert refused.status_code == 401
        wrong = httpx.get(proxy.url + "/metrics/", timeout=10, follow_redirects=True,
                          headers={"Authorization": "Bearer sk-wrong"})
        assert wrong.status_code == 401
    assert "dualpool_requests_total" in stack.plugin.metrics()


def test_the_plugin_adds_no_endpoint(stack: Stack) -> None:
    def routes(proxy: Proxy) -> set[str]:
        spec = httpx.get(proxy.url + "/openapi.json", headers=proxy.headers, timeout=30).json()
        return set(spec["paths"])

    assert routes(stack.plugin) == routes(stack.bare)
    listed = httpx.get(stack.plugin.url + "/v1/models", headers=stack.plugin.headers,
                       timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["llama"]  # the recovery group stays hidden


def test_no_prompt_text_in_logs_or_metrics(stack: Stack) -> None:
    marker = "zq" + secrets.token_hex(12)
    proxy = stack.plugin
    sent = [
        proxy.chat("llama", f"say {marker} twice", max_tokens=4),  # served
        proxy.chat("llama", f"{marker} " * 60_000),  # refused by the plugin
        proxy.chat("llama", f"{marker}", max_tokens=-3),  # refused by the backend
        proxy.chat("llama", f"{marker}", metadata={"dualpool": {"category": "c" * 99}}),
    ]
    assert [r.status_code for r in sent] == [200, 400, 400, 400]
    with httpx.stream("POST", proxy.url + CHAT, headers=proxy.headers, timeout=60,
                      json=chat(f"stream {marker}", stream=True, max_tokens=4)) as stream:
        assert stream.status_code == 200
        "".join(stream.iter_text())
    assert marker not in proxy.metrics()
    assert marker not in proxy.log.read_text(errors="replace")


def test_caller_categories_are_bounded(stack: Stack) -> None:
    with httpx.Client() as client:
        for i in range(500):
            response = client.post(
                stack.plugin.url + CHAT, headers=stack.plugin.headers, timeout=60,
                json=chat(f"category probe {i}", max_tokens=2,
                          metadata={"dualpool": {"category": f"tenant-cat-{i}"}}))
            assert response.status_code == 200, response.text
    text = stack.plugin.metrics()
    for name in ("dualpool_learned_bytes_per_token",
                 "dualpool_prompt_tokens_estimate_error_ratio_count"):
        categories = {dict(key)["category"] for key in samples(text, name)}
        assert any(c.startswith("tenant-cat-") for c in categories), name
        # MAX_KEYS keys in all (content classes included), plus one shared overflow key.
        assert len(categories) <= MAX_KEYS + 1, (name, len(categories))
