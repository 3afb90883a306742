"""Start emulated vLLM servers as real processes on loopback, for tests, demos and benchmarks.

    with start_emulator(max_model_len=4096, instant=True) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="x")
        emu.set_faults(error_rate=1.0)

    with start_emulators({"max_model_len": 8192}, {"max_model_len": 65536, "max_num_seqs": 16}) as (short, long):
        ...

Keyword arguments become command-line flags of ``litellm-dualpool emulate``
(``max_model_len=4096`` -> ``--max-model-len 4096``; ``True`` -> a bare flag; ``False``/``None``
-> omitted; a list -> several values). The port is chosen by the server (``--port 0``) and read
back from its ready file, so parallel tests never collide. ``stop()`` (also on leaving the
``with``) sends SIGTERM, then SIGKILL if the process has not exited within its grace period.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from litellm_dualpool.processes import (
    ManagedProcess,
    ProcessStartError,
    spawn,
    wait_for_ready_file,
    wait_healthy,
)

#: How long a fresh emulator may take to answer /health (imports + tokenizer load: ~1-2 s).
START_TIMEOUT_SECONDS = 30.0


class EmulatorStartError(ProcessStartError):
    """The emulator process exited or did not become healthy in time; carries its output."""


@dataclass
class RunningEmulator:
    """A started emulator process: ``base_url`` is ``http://127.0.0.1:PORT`` (no ``/v1``)."""

    base_url: str
    port: int
    child: ManagedProcess
    _tmpdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.child.process

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    def set_faults(self, **knobs: Any) -> dict[str, Any]:
        """POST /admin/faults; returns every knob's value after the change."""
        response = httpx.post(self.base_url + "/admin/faults", json=knobs, timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(self.base_url + "/admin/faults", timeout=10).json()
        return result

    def wait_healthy(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Block until ``/health`` answers 200 (EmulatorStartError, with the log, otherwise)."""
        try:
            wait_healthy(self.child, self.base_url + "/health", timeout)
        except ProcessStartError as exc:
            raise EmulatorStartError(str(exc)) from None

    def metrics_text(self) -> str:
        return httpx.get(self.base_url + "/metrics", timeout=10).text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, grace_seconds: float = 5.0) -> int | None:
        """Terminate the process (SIGTERM, then SIGKILL) and clean up; returns its exit code."""
        code = self.child.stop(grace_seconds)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        return code

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def emulator_command(**flags: Any) -> list[str]:
    """The argv that runs ``litellm-dualpool emulate`` with these flags under this Python."""
    argv = [sys.executable, "-m", "litellm_dualpool.cli", "emulate"]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def launch_emulator(*, wait: bool = True, timeout: float = START_TIMEOUT_SECONDS,
                    env: dict[str, str] | None = None, **flags: Any) -> RunningEmulator:
    """Start an emulator; with ``wait`` return only once ``/health`` answers 200.

    With ``wait=False`` (e.g. ``refuse="connection"``) it still waits for the port to be known.
    The caller owns the result: call ``stop()`` (or use :func:`start_emulator`).
    """
    tmpdir = tempfile.TemporaryDirectory(prefix="dualpool-emulator-")
    ready = Path(tmpdir.name) / "ready.json"
    log_path = Path(tmpdir.name) / "emulator.log"
    flags.setdefault("port", 0)
    flags.setdefault("host", "127.0.0.1")
    flags["ready_file"] = str(ready)
    child = spawn("emulator", emulator_command(**flags), log_path, env={**os.environ, **(env or {})})
    emu = RunningEmulator("", 0, child, tmpdir)
    try:
        deadline = time.monotonic() + timeout
        emu.port = wait_for_ready_file(child, ready, timeout)
        emu.base_url = f"http://127.0.0.1:{emu.port}"
        if wait:
            wait_healthy(child, emu.base_url + "/health", max(deadline - time.monotonic(), 0.0))
        return emu
    except ProcessStartError as exc:
        emu.stop()
        raise EmulatorStartError(str(exc)) from None
    except BaseException:
        emu.stop()
        raise


@contextmanager
def start_emulator(**flags: Any) -> Iterator[RunningEmulator]:
    """Context manager around :func:`launch_emulator`; the process is always stopped."""
    emu = launch_emulator(**flags)
    try:
        yield emu
    finally:
        emu.stop()


@contextmanager
def start_emulators(*flag_sets: dict[str, Any]) -> Iterator[list[RunningEmulator]]:
    """Several emulators started in parallel (one dict of flags each), all healthy on entry."""
    running: list[RunningEmulator] = []
    try:
        for flags in flag_sets:
            running.append(launch_emulator(wait=False, **flags))
        for emu in running:
            emu.wait_healthy()
        yield running
    finally:
        for emu in running:
            emu.stop()
