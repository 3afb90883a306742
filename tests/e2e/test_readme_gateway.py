"""README's "Enable it in your gateway" works as written: its YAML, its `litellm-dualpool
emulate` lines and its curl body, taken from README.md itself, give a 200 that the plugin routed.

Only the ports change (ephemeral ones instead of 8001/8002/4000, so parallel runs never collide);
the commands run through this interpreter (`python -m litellm_dualpool.cli`), the environment is
README's `export` lines, and the proxy is the real `litellm --config`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from plugin_stack import (
    BACKEND_START_SECONDS,
    PROXY_START_SECONDS,
    free_port,
    litellm_command,
    wait_healthy,
)

from litellm_dualpool.processes import spawn

pytestmark = [pytest.mark.e2e]

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Enable it in your gateway"
#: stands for `$(openssl rand -hex 16)` in README's export line
RANDOM_HEX = "0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class GatewaySteps:
    """What README's section tells a reader to run, parsed from the file."""

    config: dict[str, object]  #: the ```yaml block (gateway.yaml)
    emulators: list[list[str]]  #: argv after `litellm-dualpool`, one per emulate line
    exports: dict[str, str]  #: the `export NAME=VALUE` lines (shell syntax removed)
    proxy: list[str]  #: argv after `litellm`
    body: dict[str, object]  #: the curl's -d JSON


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def readme_steps() -> GatewaySteps:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    [config_text] = _blocks(section, "yaml")
    # line continuations joined; the one command substitution (a random key) made a literal
    shell = "\n".join(_blocks(section, "bash")).replace("\\\n", " ")
    shell = shell.replace("$(openssl rand -hex 16)", RANDOM_HEX)
    emulators, exports, proxy, body = [], {}, [], None
    for line in shell.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[-1] == "&":
            words = words[:-1]
        if words[:2] == ["litellm-dualpool", "emulate"]:
            emulators.append(words[1:])
        elif words[:1] == ["export"]:
            exports.update(word.split("=", 1) for word in words[1:])
        elif words[:1] == ["litellm"]:
            proxy = words[1:]
        elif words[:1] == ["curl"]:
            body = json.loads(words[words.index("-d") + 1])
    assert emulators and exports and proxy and body, "README's gateway steps are incomplete"
    return GatewaySteps(yaml.safe_load(config_text), emulators, exports, proxy, body)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _with_flag(argv: list[str], name: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(name) + 1] = value
    return out


@contextmanager
def _started(argv: list[str], env: dict[str, str], log: Path, health_url: str,
             seconds: float) -> Iterator[None]:
    with spawn(log.stem, argv, log, env=env) as child:
        wait_healthy(health_url, child, seconds)
        yield


def test_readme_steps_parse_into_a_two_pool_gateway() -> None:
    steps = readme_steps()
    groups = {d["model_name"] for d in steps.config["model_list"]}  # type: ignore[index, union-attr]
    assert steps.body["model"] in groups
    served = {_flag(e, "--served-model-name") for e in steps.emulators}
    models = {d["litellm_params"]["model"] for d in steps.config["model_list"]}  # type: ignore[index, union-attr]
    # a 404 otherwise: hosted_vllm/<name> must be a name the backends serve
    assert {m.removeprefix("hosted_vllm/") for m in models} == served
    settings = steps.config["litellm_settings"]
    assert settings["disable_aiohttp_transport"] is True  # type: ignore[index]
    assert steps.exports.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.slow
def test_readme_gateway_answers_200_routed_by_the_plugin(tmp_path: Path) -> None:
    steps = readme_steps()
    env = {k: v for k, v in os.environ.items() if k not in ("LITELLM_DUALPOOL_CONFIG",
                                                             "PROMETHEUS_MULTIPROC_DIR")}
    ports = {}  # README's port -> a free one
    for argv in steps.emulators:
        ports[_flag(argv, "--port")] = str(free_port())
    exports = {}
    for name, value in steps.exports.items():
        for old, new in ports.items():
            value = value.replace(f"127.0.0.1:{old}/", f"127.0.0.1:{new}/")
        exports[name] = value
    env.update(exports, PYTHONUNBUFFERED="1")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(steps.config, sort_keys=False), encoding="utf-8")
    proxy_port = str(free_port())
    proxy_argv = [*litellm_command(), *_with_flag(
        [config.name if a == "gateway.yaml" else a for a in steps.proxy], "--port", proxy_port)]
    proxy_argv = [str(config) if a == config.name else a for a in proxy_argv]
    assert _flag(proxy_argv, "--host") == "127.0.0.1"
    with ExitStack() as stack:
        for i, argv in enumerate(steps.emulators):
            port = ports[_flag(argv, "--port")]
            cli = [sys.executable, "-m", "litellm_dualpool.cli", *_with_flag(argv, "--port", port)]
            stack.enter_context(_started(cli, env, tmp_path / f"emulator-{i}.log",
                                         f"http://127.0.0.1:{port}/health", BACKEND_START_SECONDS))
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        stack.enter_context(_started(proxy_argv, env, tmp_path / "proxy.log",
                                     proxy_url + "/health/liveliness", PROXY_START_SECONDS))
        response = httpx.post(proxy_url + "/v1/chat/completions", json=steps.body, timeout=120,
                              headers={"Authorization": f"Bearer {exports['LITELLM_MASTER_KEY']}"})
        log = (tmp_path / "proxy.log").read_text(errors="replace")[-3000:]
        assert response.status_code == 200, (response.text, log)
        assert response.headers["x-dualpool-pool"] == "short"
        assert int(response.headers["x-dualpool-budget-tokens"]) > 32
        assert response.json()["choices"][0]["message"]["content"]
