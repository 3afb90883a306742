"""Learned calibration state: where it lives (in process or in Redis), how workers share it, and
how far one tenant may move it.

    Observation  one finished request's learnable facts (state/observation.py)
    InfluenceGuard  per-tenant share limits per calibration key (state/guard.py)
    Learner      guard + calibrator, snapshot/restore of both (state/learner.py)
    StateStore   MemoryStore (default) | RedisStore (state/store.py, state/redis_store.py)

`build_store` makes the configured store; it imports redis only for the Redis backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from litellm_dualpool.core.calibration import Calibrator
from litellm_dualpool.state.guard import Admission, InfluenceGuard, InfluenceLimits
from litellm_dualpool.state.learner import Learner, Outcome
from litellm_dualpool.state.observation import Observation
from litellm_dualpool.state.settings import StateConfig, redis_settings
from litellm_dualpool.state.store import MemoryStore, StateStore

if TYPE_CHECKING:
    from litellm_dualpool.metrics import DualPoolMetrics

__all__ = ["Admission", "InfluenceGuard", "InfluenceLimits", "Learner", "MemoryStore",
           "Observation", "Outcome", "StateConfig", "StateStore", "build_store"]


def build_store(config: StateConfig, calibrator: Calibrator, *,
                metrics: DualPoolMetrics | None = None,
                router_settings: Mapping[str, Any] | None = None) -> StateStore:
    """The store `config` names, learning into `calibrator` behind the influence guard."""
    learner = Learner(calibrator, InfluenceGuard(config.influence.to_limits()))
    if config.backend == "redis":
        from litellm_dualpool.state.redis_store import RedisStore

        return RedisStore(learner, redis_settings(config, router_settings), metrics=metrics)
    return MemoryStore(learner, metrics=metrics)
