"""Helpers for the plugin's end-to-end tests: stand-in vLLM backends and a real `litellm` proxy,
all on 127.0.0.1 with ephemeral ports, started from the interpreter running the tests (so the
same tests run on .venv and .venv-litellm110) and always stopped."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from litellm_dualpool import processes
from litellm_dualpool.processes import ManagedProcess, free_port, spawn

BACKEND_SCRIPT = Path(__file__).with_name("backend.py")
#: The proxy needs 8-16 s here; allow for a loaded CI machine.
PROXY_START_SECONDS = 90.0
BACKEND_START_SECONDS = 30.0


def offline_env(**extra: str) -> dict[str, str]:
    # HF_HUB_OFFLINE: LiteLLM otherwise retries a tokenizer download for ~20 s inside failed
    # requests to llama-named models on a machine without network.
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_OFFLINE_MODE="true",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for name in ("LITELLM_DUALPOOL_CONFIG", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        env.pop(name, None)
    env.update(extra)
    return env


def wait_healthy(url: str, child: ManagedProcess, seconds: float) -> None:
    """Block until `url` answers 200; RuntimeError (ProcessStartError) with the log otherwise."""
    processes.wait_healthy(child, url, seconds)


def eventually(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll `condition` every 0.1 s until it holds; AssertionError after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not reached within {seconds} s")


@dataclass
class Backend:
    name: str
    max_model_len: int
    url: str

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(self.url + "/stats", timeout=5).json()
        return result


@contextmanager
def start_backend(name: str, max_model_len: int, log_dir: Path, *, usage: bool = True,
                  error_style: str = "current") -> Iterator[Backend]:
    """A stand-in vLLM (backend.py); `error_style` picks whose over-length 400 it answers."""
    port = free_port()
    args = [sys.executable, str(BACKEND_SCRIPT), "--port", str(port), "--name", name,
            "--max-model-len", str(max_model_len), "--error-style", error_style] + (
                [] if usage else ["--no-usage"])
    with spawn(f"backend-{name}", args, log_dir / f"backend-{name}.log",
               env=offline_env()) as child:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url + "/health", child, BACKEND_START_SECONDS)
        yield Backend(name, max_model_len, url)


@dataclass
class Proxy:
    url: str
    master_key: str
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}

    def chat(self, model: str, content: str, **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
        return httpx.post(self.url + "/v1/chat/completions", json=body, headers=self.headers,
                          timeout=60)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics/", headers=self.headers, timeout=10,
                         follow_redirects=True).text


def litellm_command() -> list[str]:
    script = Path(sys.executable).with_name("litellm")
    return [str(script)]


@contextmanager
def start_proxy(config: dict[str, Any], log_dir: Path) -> Iterator[Proxy]:
    path = log_dir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    key = "sk-" + secrets.token_hex(16)
    log = log_dir / "proxy.log"
    argv = [*litellm_command(), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    with spawn("litellm-proxy", argv, log, env=offline_env(LITELLM_MASTER_KEY=key)) as child:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url + "/health/liveliness", child, PROXY_START_SECONDS)
        yield Proxy(url, key, log)


def run_proxy_until_exit(config: dict[str, Any], log_dir: Path, timeout: float = PROXY_START_SECONDS
                         ) -> tuple[int | None, str]:
    """Start a proxy expected to refuse its config; (exit code or None if still up, output)."""
    path = log_dir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    process = subprocess.Popen(
        [*litellm_command(), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=offline_env(LITELLM_MASTER_KEY="sk-" + secrets.token_hex(16)))
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output.decode(errors="replace")
    except subprocess.TimeoutExpired:
        ManagedProcess("litellm-proxy", process, path).stop()
        return None, ""


def deployment(group: str, backend: Backend, **info: Any) -> dict[str, Any]:
    return {"model_name": group,
            "litellm_params": {"model": "hosted_vllm/m", "api_base": backend.api_base,
                               "api_key": "none"},
            "model_info": {"max_model_len": backend.max_model_len, **info}}


__all__ = ["Backend", "ExitStack", "Proxy", "deployment", "run_proxy_until_exit", "start_backend",
           "start_proxy"]
