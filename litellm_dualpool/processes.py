"""Child processes on loopback: start one with its output in a log file, wait until it is
healthy, stop it. One implementation for the demo, the emulator's testing helpers and the test
suites, which all start servers (emulated vLLM, the LiteLLM proxy, Redis, real vLLM) and must
never leave one behind or hang waiting for one that died.

A process may be started in a session of its own (``new_session=True``): ``stop`` then signals
its whole group, so a server's own children (vLLM's engine, uvicorn's workers) go with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

#: How often a wait polls (a health URL, a ready file, a condition).
POLL_SECONDS = 0.05
#: SIGTERM, then SIGKILL after this long.
STOP_GRACE_SECONDS = 10.0


class ProcessStartError(RuntimeError):
    """A child exited, or did not become ready in time, or the wait was cancelled; the message
    carries the end of its log."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers that cannot report the port they bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    """A started child and the file its stdout and stderr go to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    new_session: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM (the whole group of a new session), SIGKILL after `grace_seconds`; returns
        the exit status. A no-op on a process that has exited (it is still reaped)."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(grace_seconds)
        if self.new_session:  # children left in the group after the leader exited
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.new_session:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(name: str, argv: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, new_session: bool = False,
          preexec_fn: Callable[[], None] | None = None, append: bool = False) -> ManagedProcess:
    """Start `argv` with stdin closed and its output in `log_path` (appended to with `append`,
    for a process restarted on the same log)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab" if append else "wb") as log_file:
        process = subprocess.Popen(
            list(argv), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=new_session,
            preexec_fn=preexec_fn)
    return ManagedProcess(name, process, log_path, new_session)


def wait_until(ready: Callable[[], bool], child: ManagedProcess, what: str, seconds: float, *,
               cancelled: threading.Event | None = None) -> None:
    """Poll `ready` until it holds; ProcessStartError (with the log) if `child` exits first,
    `seconds` pass, or `cancelled` is set."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancelled is not None and cancelled.is_set():
            raise ProcessStartError(f"{child.name}: cancelled while waiting for {what}")
        if not child.alive():
            raise ProcessStartError(f"{child.name} exited with status {child.returncode} before "
                                    f"{what}:\n{child.log_tail()}")
        if ready():
            return
        time.sleep(POLL_SECONDS)
    raise ProcessStartError(f"{child.name}: no {what} after {seconds:g} s:\n{child.log_tail()}")


def answers_200(url: str) -> Callable[[], bool]:
    """A readiness check: `url` answers HTTP 200."""
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False
    return check


def wait_healthy(child: ManagedProcess, url: str, seconds: float, *,
                 cancelled: threading.Event | None = None) -> None:
    """Block until `url` answers 200 (ProcessStartError with the log otherwise)."""
    wait_until(answers_200(url), child, f"a 200 from {url}", seconds, cancelled=cancelled)


def wait_for_ready_file(child: ManagedProcess, path: Path, seconds: float, *,
                        cancelled: threading.Event | None = None) -> int:
    """The port a server wrote to its ready file (``{"port": P}``), once it has."""
    found: list[int] = []

    def ready() -> bool:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            found.append(int(json.loads(path.read_text())["port"]))
        return bool(found)

    wait_until(ready, child, f"its ready file {path.name}", seconds, cancelled=cancelled)
    return found[0]
