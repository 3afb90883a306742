"""Pool limits read from the backends, through the real proxy: emulated vLLM servers
(`litellm-dualpool emulate`) report ``max_model_len`` on ``/v1/models``; the YAML has none.

One proxy routes a group declared only by ``model_info.pool`` labels, with a third deployment
whose backend is down at start: it takes no traffic until its backend comes up, then joins its
pool (retried every second here). A second proxy has a configured limit
its backend contradicts (a start-up warning); a third, the same with ``on_mismatch: error``,
must not start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from plugin_stack import Proxy, eventually, run_proxy_until_exit, start_proxy

from litellm_dualpool.emulator.testing import RunningEmulator, start_emulator, start_emulators
from litellm_dualpool.processes import free_port
from tests.prometheus_text import sample_value

pytestmark = [pytest.mark.e2e, pytest.mark.litellm_compat]

SHORT_LEN, LONG_LEN = 2048, 16384
SERVED = "llama-3-70b"


def dep(base: str, **info: Any) -> dict[str, Any]:
    return {"model_name": "llama",
            "litellm_params": {"model": f"hosted_vllm/{SERVED}", "api_base": base, "api_key": "none"},
            "model_info": info}


def config(model_list: list[dict[str, Any]], **discovery: Any) -> dict[str, Any]:
    return {"model_list": model_list,
            "litellm_settings": {"callbacks": ["prometheus", "litellm_dualpool.proxy_handler_instance"]},
            "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
            "dualpool_settings": {"default_output_tokens": 64,
                                  "discovery": {"timeout_seconds": 2, **discovery}}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("discovery-e2e")
    flags = {"instant": True, "output_len_dist": "fixed:8"}
    with ExitStack() as stack:
        short, long = stack.enter_context(start_emulators(dict(flags, max_model_len=SHORT_LEN),
                                                          dict(flags, max_model_len=LONG_LEN)))
        late_port = free_port()
        dead = f"http://127.0.0.1:{late_port}/v1"
        (logs / "routed").mkdir()
        routed = stack.enter_context(start_proxy(config([
            dep(short.openai_base_url, pool="short"), dep(long.openai_base_url, pool="long"),
            dep(dead, pool="short")], retry_seconds=1), logs / "routed"))
        yield {"proxy": routed, "short": short, "long": long, "dead": dead, "logs": logs,
               "late_port": late_port, "flags": flags}


def served_by(response: httpx.Response) -> str:
    return response.headers.get("x-litellm-model-api-base", "")


def test_the_emulator_reports_its_max_model_len(stack: dict[str, Any]) -> None:
    short: RunningEmulator = stack["short"]
    cards = httpx.get(short.openai_base_url + "/models", timeout=5).json()["data"]
    assert [(c["id"], c["max_model_len"]) for c in cards] == [(SERVED, SHORT_LEN)]


def test_routing_uses_the_limits_read_from_the_backends(stack: dict[str, Any]) -> None:
    proxy: Proxy = stack["proxy"]
    short, long = stack["short"].openai_base_url, stack["long"].openai_base_url
    for _ in range(6):  # the short pool's dead deployment is never chosen
        response = proxy.chat("llama", "hello there", max_tokens=16)
        assert response.status_code == 200, response.text
        assert response.headers["x-dualpool-pool"] == "short"
        assert served_by(response) == short
    # 64 prompt tokens at most + 4000 output: only the long pool's 16384 holds it
    response = proxy.chat("llama", "hello there", max_tokens=4000)
    assert response.status_code == 200, response.text
    assert response.headers["x-dualpool-pool"] == "long"
    assert served_by(response) == long
    # over the long pool's discovered limit: the plugin's own context-length 400
    response = proxy.chat("llama", "hello there", max_tokens=LONG_LEN + 1)
    assert response.status_code == 400, response.text
    assert "16384" in response.text


def test_a_backend_down_at_start_is_named_and_left_out(stack: dict[str, Any]) -> None:
    log = (stack["logs"] / "routed" / "proxy.log").read_text(errors="replace")
    assert "model_list[2]" in log and stack["dead"] + "/models" in log
    assert "takes no traffic until its limit is read" in log
    assert "routing llama: short(2048) < long(16384)" in log


def test_a_backend_that_comes_up_later_joins_its_pool(stack: dict[str, Any]) -> None:
    proxy: Proxy = stack["proxy"]
    assert sample_value(proxy.metrics(), "dualpool_deployments_without_limit",
                        model_group="llama") == 1
    with start_emulator(**stack["flags"], max_model_len=SHORT_LEN, port=stack["late_port"]):
        eventually(lambda: sample_value(proxy.metrics(), "dualpool_deployments_without_limit",
                                        model_group="llama") == 0)

        def served_late() -> bool:
            response = proxy.chat("llama", "hello there", max_tokens=16)
            assert response.status_code == 200, response.text
            assert response.headers["x-dualpool-pool"] == "short"
            return served_by(response) == stack["dead"]

        eventually(served_late, seconds=60)
    log = (stack["logs"] / "routed" / "proxy.log").read_text(errors="replace")
    assert "model_list[2]" in log and "the deployment now takes traffic" in log


def test_a_configured_limit_the_backend_contradicts_warns_at_start(
        stack: dict[str, Any], tmp_path: Path) -> None:
    short, long = stack["short"].openai_base_url, stack["long"].openai_base_url
    models = [dep(short, max_model_len=4096), dep(long, max_model_len=LONG_LEN)]
    with start_proxy(config(models), tmp_path) as proxy:
        log = proxy.log.read_text(errors="replace")
        assert ("model_list[0] ('llama', 'llama-3-70b' at " + short + "/models): "
                "model_info.max_model_len is 4096 but the backend serves max_model_len 2048 "
                "(the configured value is used)") in log
        response = proxy.chat("llama", "hello there", max_tokens=16)
        assert response.status_code == 200 and response.headers["x-dualpool-pool"] == "short"
        assert sample_value(proxy.metrics(), "dualpool_deployments_without_limit",
                            model_group="llama") == 0


def test_with_on_mismatch_error_the_proxy_does_not_start(stack: dict[str, Any], tmp_path: Path) -> None:
    short, long = stack["short"].openai_base_url, stack["long"].openai_base_url
    models = [dep(short, max_model_len=4096), dep(long, max_model_len=LONG_LEN)]
    code, output = run_proxy_until_exit(config(models, on_mismatch="error"), tmp_path)
    assert code not in (None, 0)
    assert "discovery.on_mismatch is error" in output
    assert "model_list[0].model_info.max_model_len" in output
