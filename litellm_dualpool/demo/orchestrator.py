"""Start and stop the demo's processes: emulated vLLM instances and the real LiteLLM proxy.

Every process runs in its own process group (``start_new_session``) with its output in a log
file; :meth:`Stack.stop` terminates each group (SIGTERM, then SIGKILL after a grace period) and
is called from a ``finally`` block, so Ctrl-C, SIGTERM or a failure stops everything that was
started. Backends are found by the proxy through environment variables that
``proxy_config/demo.yaml`` names as ``api_base: os.environ/DUALPOOL_DEMO_<POOL>_<i>_API_BASE``
(LiteLLM resolves ``os.environ/`` anywhere in its config), so the shipped YAML is the one used.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from litellm_dualpool.emulator.testing import emulator_command
from litellm_dualpool.processes import (
    ManagedProcess,
    ProcessStartError,
    free_port,
    spawn,
    wait_for_ready_file,
    wait_healthy,
)

#: a fresh LiteLLM proxy takes 8-16 s here to import and load its config; allow for a busy box
PROXY_START_TIMEOUT_SECONDS = 150.0
EMULATOR_START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 8.0
#: the environment LiteLLM needs offline (no cost-map fetch, no hub tokenizer download)
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true",
               "HF_HUB_OFFLINE": "1"}


class StackError(ProcessStartError):
    """A process of the demo did not start; the message names it and ends with its log tail."""


@dataclass(frozen=True, slots=True)
class EmulatedPool:
    """One pool of emulated vLLM instances, as the demo's YAML declares it: its vLLM serve flags
    and, per instance, the environment variable its ``api_base: os.environ/...`` names."""

    name: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    api_base_env: tuple[str, ...]

    @property
    def instances(self) -> int:
        return len(self.api_base_env)


#: vLLM's --max-num-batched-tokens where a deployment's model_info names none
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192


def pools_of_config(path: Path) -> tuple[EmulatedPool, ...]:
    """The pools a demo YAML declares (deployments grouped by ``model_info.pool``, smallest
    window first). StackError for a deployment the demo cannot start a backend for."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for i, entry in enumerate(data.get("model_list") or []):
        info = entry.get("model_info") or {}
        api_base = str((entry.get("litellm_params") or {}).get("api_base", ""))
        if not api_base.startswith("os.environ/") or not isinstance(info.get("pool"), str):
            raise StackError(f"{path}: model_list[{i}] needs model_info.pool and an api_base "
                             "of the form os.environ/NAME (the demo starts that backend)")
        found.setdefault(info["pool"], []).append((api_base.removeprefix("os.environ/"), info))
    pools = []
    for name, members in found.items():
        first = members[0][1]
        pools.append(EmulatedPool(
            name, int(first["max_model_len"]), int(first.get("max_num_seqs", 256)),
            int(first.get("max_num_batched_tokens", DEFAULT_MAX_NUM_BATCHED_TOKENS)),
            tuple(env for env, _ in members)))
    return tuple(sorted(pools, key=lambda p: p.max_model_len))


@dataclass(frozen=True, slots=True)
class EngineFlags:
    """What every emulated instance runs: model, GPU, tensor parallelism, wall-clock speed-up."""

    model: str = "llama-3-70b"
    gpu: str = "a100"
    tensor_parallel_size: int = 4
    speedup: float = 20.0
    seed: int = 7


def litellm_executable() -> str:
    """The ``litellm`` console script of this interpreter's environment."""
    beside = Path(sys.executable).with_name("litellm")
    if beside.exists():
        return str(beside)
    found = shutil.which("litellm")
    if found is None:
        raise StackError("the `litellm` command is not installed (pip install 'litellm[proxy]')")
    return found


def default_master_key() -> str:
    """LITELLM_MASTER_KEY from the environment, else a fresh strong one (weak keys are refused)."""
    return os.environ.get("LITELLM_MASTER_KEY") or "sk-demo-" + secrets.token_urlsafe(24)


@dataclass
class Stack:
    """The demo's processes. ``start()`` brings them up in order; ``stop()`` is idempotent."""

    config_path: Path
    log_dir: Path
    pools: tuple[EmulatedPool, ...] = ()
    engine: EngineFlags = field(default_factory=EngineFlags)
    master_key: str = field(default_factory=default_master_key)
    processes: list[ManagedProcess] = field(default_factory=list)
    #: pool name -> the instances' OpenAI base URLs (``http://127.0.0.1:P/v1``)
    backends: dict[str, list[str]] = field(default_factory=dict)
    proxy_url: str = ""
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Make a ``start()`` running in another thread give up waiting (raises StackError)."""
        self._cancelled.set()

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.start_emulators()
        self.start_proxy()

    # -- emulated vLLM ----------------------------------------------------------------------

    def start_emulators(self) -> None:
        if not self.pools:
            self.pools = pools_of_config(self.config_path)
        pending: list[tuple[EmulatedPool, ManagedProcess, Path]] = []
        for pool in self.pools:
            for i in range(pool.instances):
                ready = self.log_dir / f"{pool.name}-{i}.ready.json"
                ready.unlink(missing_ok=True)
                argv = emulator_command(
                    model=self.engine.model, gpu=self.engine.gpu,
                    tensor_parallel_size=self.engine.tensor_parallel_size,
                    max_model_len=pool.max_model_len, max_num_seqs=pool.max_num_seqs,
                    max_num_batched_tokens=pool.max_num_batched_tokens,
                    speedup=self.engine.speedup, seed=self.engine.seed + i,
                    served_model_name=self.engine.model, host="127.0.0.1", port=0,
                    ready_file=str(ready))
                name = f"emulator-{pool.name}-{i}"
                process = spawn(name, argv, self.log_dir / f"{name}.log", env=os.environ,
                                new_session=True)
                self.processes.append(process)
                pending.append((pool, process, ready))
        deadline = time.monotonic() + EMULATOR_START_TIMEOUT_SECONDS
        for pool, process, ready in pending:
            port = wait_for_ready_file(process, ready, _left(deadline), cancelled=self._cancelled)
            base = f"http://127.0.0.1:{port}"
            wait_healthy(process, base + "/health", _left(deadline), cancelled=self._cancelled)
            self.backends.setdefault(pool.name, []).append(base + "/v1")

    def backend_env(self) -> dict[str, str]:
        """The variables the YAML's ``api_base: os.environ/...`` entries read."""
        pools = {pool.name: pool for pool in self.pools}
        return {pools[name].api_base_env[i]: url
                for name, urls in self.backends.items() for i, url in enumerate(urls)}

    def pool_of_api_base(self) -> dict[str, str]:
        """Backend base URL (as LiteLLM reports it in x-litellm-model-api-base) -> pool name."""
        return {url.rstrip("/"): name for name, urls in self.backends.items() for url in urls}

    # -- the LiteLLM proxy -------------------------------------------------------------------

    def proxy_env(self) -> dict[str, str]:
        return {**os.environ, **OFFLINE_ENV, **self.backend_env(),
                "LITELLM_MASTER_KEY": self.master_key}

    def start_proxy(self) -> None:
        port = free_port()
        argv = [litellm_executable(), "--config", str(self.config_path),
                "--host", "127.0.0.1", "--port", str(port)]
        if self._cancelled.is_set():
            raise StackError("cancelled")
        process = spawn("litellm-proxy", argv, self.log_dir / "litellm-proxy.log",
                        env=self.proxy_env(), new_session=True)
        self.processes.append(process)
        self.proxy_url = f"http://127.0.0.1:{port}"
        wait_healthy(process, self.proxy_url + "/health/liveliness", PROXY_START_TIMEOUT_SECONDS,
                     cancelled=self._cancelled)

    def stop(self) -> None:
        # the proxy first (it holds connections to the backends), then the backends
        for process in reversed(self.processes):
            process.stop(STOP_GRACE_SECONDS)


def _left(deadline: float) -> float:
    """Seconds from now until `deadline` (one deadline shared by the instances' waits)."""
    return max(deadline - time.monotonic(), 0.0)
