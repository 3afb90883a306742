"""Real processes for the multi-worker end-to-end tests: stand-in vLLM backends and `litellm`
proxies (optionally with several workers) on 127.0.0.1, restartable, always stopped."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from litellm_dualpool.processes import ManagedProcess, free_port, spawn
from tests.e2e.plugin_stack import offline_env, wait_healthy
from tests.prometheus_text import sample_value

TESTS = Path(__file__).resolve().parents[1]
BACKEND_SCRIPT = TESTS / "e2e" / "backend.py"
AUTH_MODULE = Path(__file__).with_name("tenant_auth.py")
START_SECONDS = 120.0
MASTER_KEY = "sk-master-" + "0" * 24




@dataclass
class Backend:
    name: str
    max_model_len: int
    url: str
    child: ManagedProcess

    @property
    def api_base(self) -> str:
        return self.url + "/v1"


@contextmanager
def backends(log_dir: Path, *limits: tuple[str, int]) -> Iterator[list[Backend]]:
    started: list[Backend] = []
    try:
        for name, limit in limits:
            port = free_port()
            argv = [sys.executable, str(BACKEND_SCRIPT), "--port", str(port), "--name", name,
                    "--max-model-len", str(limit)]
            child = spawn(f"backend-{name}", argv, log_dir / f"backend-{name}.log",
                          env=offline_env())
            started.append(Backend(name, limit, f"http://127.0.0.1:{port}", child))
        for backend in started:
            wait_healthy(backend.url + "/health", backend.child, 30)
        yield started
    finally:
        for backend in started:
            backend.child.stop()


def proxy_config(group: str, pools: list[Backend], dualpool_settings: dict[str, Any]
                 ) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": group,
                        "litellm_params": {"model": "hosted_vllm/m", "api_base": b.api_base,
                                           "api_key": "none"},
                        "model_info": {"max_model_len": b.max_model_len}} for b in pools],
        "litellm_settings": {"callbacks": ["litellm_dualpool.proxy_handler_instance",
                                           "prometheus"]},  # /metrics: the master key's
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY",
                             "custom_auth": "tenant_auth.user_api_key_auth"},
        "dualpool_settings": dualpool_settings,
    }


@dataclass
class Proxy:
    """A `litellm --config` process; `restart()` keeps its port, config and environment."""

    name: str
    config: dict[str, Any]
    directory: Path
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    #: the custom_auth module copied beside the YAML (the config names `tenant_auth`)
    auth_module: Path = AUTH_MODULE
    port: int = field(default_factory=free_port)
    child: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "proxy.log"

    def launch(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.auth_module, self.directory / "tenant_auth.py")  # custom_auth is found here
        path = self.directory / "litellm.yaml"
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        command = [str(Path(sys.executable).with_name("litellm")), "--config", str(path),
                   "--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers > 1:  # uvicorn kills workers that are not up within 5 s by default
            command += ["--num_workers", str(self.workers),
                        "--timeout_worker_healthcheck", str(int(START_SECONDS))]
        self.child = spawn(f"litellm-{self.name}", command, self.log, cwd=self.directory,
                           env=offline_env(LITELLM_MASTER_KEY=MASTER_KEY, **self.env),
                           append=True)

    def wait(self) -> None:
        assert self.child is not None
        wait_healthy(self.url + "/health/liveliness", self.child, START_SECONDS)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        self.child = None

    def restart(self) -> None:
        self.stop()
        self.launch()
        self.wait()

    def chat(self, key: str, content: str, **extra: Any) -> httpx.Response:
        body = {"model": "llama", "messages": [{"role": "user", "content": content}], **extra}
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {key}"})

    def budget(self, key: str, content: str, **extra: Any) -> int:
        """The plugin's estimated budget for a request (its response header)."""
        response = self.chat(key, content, **extra)
        response.raise_for_status()
        return int(response.headers["x-dualpool-budget-tokens"])

    def metrics(self, key: str = MASTER_KEY) -> str:
        """The proxy's /metrics as `key` reads it (the master key: a tenant key gets a 401)."""
        response = httpx.get(self.url + "/metrics/", timeout=10, follow_redirects=True,
                             headers={"Authorization": f"Bearer {key}"})
        response.raise_for_status()
        return response.text


@contextmanager
def running(*proxies: Proxy) -> Iterator[tuple[Proxy, ...]]:
    """Start the proxies in parallel; stop them all on exit."""
    try:
        for proxy in proxies:
            proxy.launch()
        for proxy in proxies:
            proxy.wait()
        yield proxies
    finally:
        for proxy in proxies:
            proxy.stop()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def samples(text: str, name: str, **labels: str) -> list[tuple[str, float]]:
    """Every sample of `name` whose labels include `labels`: (label text, value)."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name and all(
                f'{k}="{v}"' in (match.group(2) or "") for k, v in labels.items()):
            found.append((match.group(2) or "", float(match.group(3))))
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the matching samples (0 when none; AssertionError when the metric itself is
    not exposed)."""
    return sample_value(text, name, **labels)
