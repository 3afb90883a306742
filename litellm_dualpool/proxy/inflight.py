"""In-flight requests per pool and per deployment, counted by the plugin itself.

An attempt is opened when the filter (or the strategy) sends a request to a pool and closed by
LiteLLM's success or failure event of that attempt. Events are asynchronous and may arrive after
the next attempt opened, so each request keeps a small list of open attempts and an event closes
the one that matches its deployment (else its pool). Entries older than `ttl_seconds` are swept:
a request whose end was never logged (a client gone mid-stream) cannot hold a slot for ever.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

#: An attempt not closed after this long is assumed lost (longer than any sane request).
DEFAULT_TTL_SECONDS = 900.0
#: Sweep at most this often.
_SWEEP_EVERY_SECONDS = 5.0


@dataclass(slots=True)
class _Attempt:
    group: str
    pool: str
    deployment_id: str | None
    opened_at: float


class InFlight:
    """Thread-safe counts of open attempts; `clock` is injectable for tests."""

    def __init__(self, *, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, list[_Attempt]] = {}
        self._pools: Counter[tuple[str, str]] = Counter()
        self._deployments: Counter[str] = Counter()
        self._last_sweep = clock()

    def open(self, request_id: str, group: str, pool: str, deployment_id: str | None = None) -> None:
        now = self._clock()
        with self._lock:
            self._open.setdefault(request_id, []).append(_Attempt(group, pool, deployment_id, now))
            self._pools[(group, pool)] += 1
            if deployment_id is not None:
                self._deployments[deployment_id] += 1
            if now - self._last_sweep >= _SWEEP_EVERY_SECONDS:
                self._sweep(now)

    def assign(self, request_id: str, deployment_id: str) -> None:
        """Record the deployment picked for the request's latest attempt without one."""
        with self._lock:
            for attempt in reversed(self._open.get(request_id, ())):
                if attempt.deployment_id is None:
                    attempt.deployment_id = deployment_id
                    self._deployments[deployment_id] += 1
                    return

    def close(self, request_id: str, *, pool: str | None = None,
              deployment_id: str | None = None) -> str | None:
        """Close one open attempt of the request: the one on `deployment_id`, else on `pool`,
        else the oldest. The pool of the attempt closed; None when the request has none open."""
        with self._lock:
            attempts = self._open.get(request_id)
            if not attempts:
                return None
            match = next((a for a in attempts if deployment_id and a.deployment_id == deployment_id),
                         None) or next((a for a in attempts if pool and a.pool == pool), None)
            closed = match or attempts[0]
            self._remove(request_id, closed)
            return closed.pool

    def close_all(self, request_id: str) -> None:
        with self._lock:
            for attempt in list(self._open.get(request_id, ())):
                self._remove(request_id, attempt)

    def _remove(self, request_id: str, attempt: _Attempt) -> None:
        attempts = self._open[request_id]
        attempts.remove(attempt)
        if not attempts:
            del self._open[request_id]
        key = (attempt.group, attempt.pool)
        self._pools[key] -= 1
        if self._pools[key] <= 0:
            del self._pools[key]
        if attempt.deployment_id is not None:
            self._deployments[attempt.deployment_id] -= 1
            if self._deployments[attempt.deployment_id] <= 0:
                del self._deployments[attempt.deployment_id]

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for request_id, attempts in list(self._open.items()):
            for attempt in list(attempts):
                if now - attempt.opened_at > self._ttl:
                    self._remove(request_id, attempt)

    def pool(self, group: str, pool: str) -> int:
        return self._pools.get((group, pool), 0)

    def deployment(self, deployment_id: str) -> int:
        return self._deployments.get(deployment_id, 0)

    def requests(self) -> int:
        """Requests with at least one open attempt."""
        with self._lock:
            return len(self._open)
