"""Redis for the multi-worker tests: a unique key prefix on the machine's shared Redis (cleaned
up afterwards), and private redis-server processes that a test may stop and restart."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from litellm_dualpool.processes import ManagedProcess, free_port, spawn, wait_until

SHARED_HOST, SHARED_PORT = "127.0.0.1", 6379
START_SECONDS = 15.0


def unique_prefix(label: str) -> str:
    return f"dualpool-test:{label}:{uuid.uuid4().hex[:10]}"


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        client.delete(key)


@contextlib.contextmanager
def shared_prefix(label: str) -> Iterator[str]:
    """A fresh key prefix on the shared Redis; its keys are deleted on exit."""
    prefix = unique_prefix(label)
    client = redis.Redis(host=SHARED_HOST, port=SHARED_PORT)
    try:
        client.ping()
        yield prefix
    finally:
        delete_prefix(client, prefix)
        client.close()


@dataclass
class PrivateRedis:
    """A redis-server of the test's own (no persistence), stoppable and restartable on its port."""

    port: int
    log: Path
    child: ManagedProcess | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.child = spawn("redis-server", [binary, "--port", str(self.port), "--bind",
                                            "127.0.0.1", "--save", "", "--appendonly", "no",
                                            "--daemonize", "no"], self.log, append=True)
        wait_until(self._answers, self.child, "a PING reply", START_SECONDS)

    def _answers(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(self.client().ping())
        return False

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        self.child = None


@contextlib.contextmanager
def private_redis(log_dir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(free_port(), log_dir / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Poll `condition` every 20 ms in the running event loop; AssertionError after `seconds`."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")
