"""Where learned calibration state lives: the store interface and the in-process default.

Routing never waits on a store: decisions read the calibrator in memory; a finished request hands
its observation to `StateStore.record`, which never blocks (the in-process store learns at once;
the Redis store queues it for its background task). Every store learns through one `Learner`
(influence guard + calibrator) and reports through the plugin's metrics.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from litellm_dualpool.core.calibration import CategoryKey
from litellm_dualpool.core.shape import RequestShape
from litellm_dualpool.core.tenant import ANONYMOUS_TENANT, ObservationTrust
from litellm_dualpool.state.learner import Learner, Outcome
from litellm_dualpool.state.observation import Observation

if TYPE_CHECKING:
    from litellm_dualpool.metrics import DualPoolMetrics


#: The learned-state gauges follow every observation of a key up to this many, then every
#: `_GAUGE_EVERY`-th (at most 7 observations stale: a fit's window is ~500).
_GAUGE_EVERY_AFTER = 64
_GAUGE_EVERY = 8


def new_worker_id() -> str:
    """A fresh id per process start (observations are unique by worker id and sequence)."""
    return uuid.uuid4().hex[:12]


class StateStore:
    """Base of the stores: the learner, observation numbering and metric reporting.

    Subclasses implement `record`; `start`/`stop` manage background work (none here).
    """

    backend = "base"

    def __init__(self, learner: Learner, *, metrics: DualPoolMetrics | None = None,
                 worker_id: str | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.learner = learner
        self.metrics = metrics
        self.worker_id = worker_id or new_worker_id()
        self._wall_clock = wall_clock
        self._seq = itertools.count(1)
        #: Learned observations reported per calibration key (bounded like the keys): the
        #: learned-state gauges are refreshed on every one of the first `_GAUGE_EVERY_AFTER`
        #: and then on every `_GAUGE_EVERY`-th (reading both back takes three locks and two
        #: gauge writes, a third of learning's cost; a scrape every 15 s sees the same).
        self._reported: dict[CategoryKey, int] = {}

    @property
    def calibrator(self) -> Any:
        return self.learner.calibrator

    def observation(self, key: CategoryKey, shape: RequestShape, prompt_tokens: int, *,
                    tenant: str = ANONYMOUS_TENANT,
                    trust: ObservationTrust = ObservationTrust.TRUSTED) -> Observation:
        """A new observation made by this worker, now."""
        return Observation(key=key, shape=shape, prompt_tokens=prompt_tokens, tenant=tenant,
                           trust=trust, origin=self.worker_id, seq=next(self._seq),
                           time_ms=int(self._wall_clock() * 1000))

    def record(self, obs: Observation) -> Outcome | None:
        """Hand over one observation; its outcome now, or None when it is learned later."""
        raise NotImplementedError

    def observe(self, key: CategoryKey, shape: RequestShape, prompt_tokens: int, *,
                tenant: str = ANONYMOUS_TENANT,
                trust: ObservationTrust = ObservationTrust.TRUSTED) -> Outcome | None:
        """`record(observation(...))`: what the plugin calls when a request finished.
        Observations of untrusted tenants are counted here and never shared."""
        obs = self.observation(key, shape, prompt_tokens, tenant=tenant, trust=trust)
        if trust is ObservationTrust.NONE:
            self._report(obs, Outcome.UNTRUSTED)
            return Outcome.UNTRUSTED
        return self.record(obs)

    def restore_blocking(self) -> bool:
        """Load persisted state before serving (nothing to load in process)."""
        return True

    async def start(self) -> None:
        """Begin background work (idempotent)."""

    async def stop(self) -> None:
        """Flush and end background work (idempotent)."""

    @property
    def up(self) -> bool:
        """Whether the shared backend is reachable (always, in process)."""
        return True

    def _apply(self, obs: Observation, time_ms: int | None = None) -> Outcome:
        outcome = self.learner.apply(obs, time_ms)
        self._report(obs, outcome)
        return outcome

    def _report(self, obs: Observation, outcome: Outcome) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        local = obs.origin == self.worker_id
        metrics.state_observations.labels("local" if local else "remote", outcome.value).inc()
        group = obs.key.model_group
        if local:
            metrics.learning.labels(group, outcome.value).inc()
        if outcome is Outcome.LEARNED:
            calibrator = self.learner.calibrator
            key = calibrator.stored_key(obs.key, obs.shape)  # bounded labels
            seen = self._reported[key] = self._reported.get(key, 0) + 1
            if seen > _GAUGE_EVERY_AFTER and seen % _GAUGE_EVERY:
                return
            metrics.bytes_per_token.labels(group, key.category).set(calibrator.bytes_per_token(key))
            metrics.spread.labels(group, key.category).set(calibrator.spread(key))


class MemoryStore(StateStore):
    """In-process state: learned at once, lost on restart, not shared between workers."""

    backend = "memory"

    def __init__(self, learner: Learner, *, metrics: DualPoolMetrics | None = None,
                 worker_id: str | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        super().__init__(learner, metrics=metrics, worker_id=worker_id, wall_clock=wall_clock)
        if metrics is not None:
            metrics.state_backend_up.labels(self.backend).set(1)

    def record(self, obs: Observation) -> Outcome:
        return self._apply(obs)
