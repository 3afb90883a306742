"""Helpers of the reliability suite: emulated vLLM pools behind a real `litellm` proxy.

Process handling (ports, health waits, clean-up) is plugin_stack's (tests/e2e); this module only
builds configs for emulated deployments, starts proxies side by side, and reads what the tests
judge by: Prometheus samples and the proxy process's memory from /proc.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from plugin_stack import Proxy, start_proxy
from prometheus_client.parser import text_string_to_metric_families

from litellm_dualpool.emulator.testing import RunningEmulator
from tests.prometheus_text import sample_value

#: The emulator's default served model name; llama-named, like a real deployment.
SERVED_MODEL = "llama-3-70b"
PLUGIN_CALLBACK = "litellm_dualpool.proxy_handler_instance"
#: LiteLLM counts a failed request's prompt with a Hugging Face tokenizer for llama-named models
#: and, offline, retries the hub for ~24 s per failure unless the hub is switched off.
OFFLINE_HUB = {"HF_HUB_OFFLINE": "1"}


def deployment(group: str, emu: RunningEmulator, max_model_len: int, **info: Any) -> dict[str, Any]:
    return {"model_name": group,
            "litellm_params": {"model": f"hosted_vllm/{SERVED_MODEL}",
                               "api_base": emu.openai_base_url, "api_key": "none"},
            "model_info": {"max_model_len": max_model_len, **info}}


def proxy_config(model_list: list[dict[str, Any]], *, plugin: bool = True,
                 dualpool_settings: Mapping[str, Any] | None = None,
                 router_settings: Mapping[str, Any] | None = None,
                 litellm_settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A proxy config with prometheus (auth required on /metrics) and, if `plugin`, the plugin."""
    callbacks = ["prometheus", PLUGIN_CALLBACK] if plugin else ["prometheus"]
    config: dict[str, Any] = {
        "model_list": model_list,
        "litellm_settings": {"callbacks": callbacks, "require_auth_for_metrics_endpoint": True,
                             **(litellm_settings or {})},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    if router_settings:
        config["router_settings"] = dict(router_settings)
    if plugin:
        config["dualpool_settings"] = dict(dualpool_settings or {})
    return config


@contextmanager
def start_proxies(configs: Sequence[dict[str, Any]], log_dir: Path) -> Iterator[list[Proxy]]:
    """Several proxies started side by side (each takes 10-40 s here), all stopped on exit."""
    managers: list[AbstractContextManager[Proxy]] = []
    proxies: list[Proxy | None] = [None] * len(configs)
    errors: list[BaseException] = []

    def enter(i: int) -> None:
        try:
            proxies[i] = managers[i].__enter__()
        except BaseException as error:
            errors.append(error)

    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFLINE_HUB.items():
            patch.setenv(name, value)
        for i, config in enumerate(configs):
            directory = log_dir / f"proxy-{i}"
            directory.mkdir(parents=True, exist_ok=True)
            managers.append(start_proxy(config, directory))
        threads = [threading.Thread(target=enter, args=(i,)) for i in range(len(configs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    try:
        if errors:
            raise errors[0]
        yield [p for p in proxies if p is not None]
    finally:
        for i, manager in enumerate(managers):
            if proxies[i] is not None:
                manager.__exit__(None, None, None)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` in Prometheus text: sorted label items -> value."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (AssertionError when
    the metric itself is not exposed)."""
    return sample_value(text, name, **labels)


def listening_pid(port: int) -> int:
    """The process listening on 127.0.0.1:`port` (found through /proc, without psutil)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as file:
            next(file)
            for line in file:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    raise LookupError(f"no process of ours listens on port {port}")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out
