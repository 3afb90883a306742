"""Helpers for the plugin's end-to-end tests: stand-in vLLM backends and a real `litellm` proxy,
all on 127.0.0.1 with ephemeral ports, started from the interpreter running the tests (so the
same tests run on .venv and .venv-litellm110) and always stopped."""

from __future__ import annotations

import os
import secrets
import socket
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

BACKEND_SCRIPT = Path(__file__).with_name("backend.py")
#: The proxy needs 8-16 s here; allow for a loaded CI machine.
PROXY_START_SECONDS = 90.0
BACKEND_START_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def offline_env(**extra: str) -> dict[str, str]:
    # HF_HUB_OFFLINE: LiteLLM otherwise retries a tokenizer download for ~20 s inside failed
    # requests to llama-named models on a machine without network.
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_OFFLINE_MODE="true",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for name in ("LITELLM_DUALPOOL_CONFIG", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        env.pop(name, None)
    env.update(extra)
    return env


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {seconds} s:\n{log.read_text()[-4000:]}")


def stop_process(process: subprocess.Popen[bytes] | None, grace_seconds: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `grace_seconds`; a no-op for None or an exited process."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


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
    log = log_dir / f"backend-{name}.log"
    args = [sys.executable, str(BACKEND_SCRIPT), "--port", str(port), "--name", name,
            "--max-model-len", str(max_model_len), "--error-style", error_style] + (
                [] if usage else ["--no-usage"])
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=offline_env())
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url + "/health", process, log, BACKEND_START_SECONDS)
        yield Backend(name, max_model_len, url)
    finally:
        stop_process(process)


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
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*litellm_command(), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=offline_env(LITELLM_MASTER_KEY=key))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url + "/health/liveliness", process, log, PROXY_START_SECONDS)
        yield Proxy(url, key, log)
    finally:
        stop_process(process)


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
        stop_process(process)
        return None, ""


def deployment(group: str, backend: Backend, **info: Any) -> dict[str, Any]:
    return {"model_name": group,
            "litellm_params": {"model": "hosted_vllm/m", "api_base": backend.api_base,
                               "api_key": "none"},
            "model_info": {"max_model_len": backend.max_model_len, **info}}


__all__ = ["Backend", "ExitStack", "Proxy", "deployment", "run_proxy_until_exit", "start_backend",
           "start_proxy"]
