"""Routers the fleet simulator can run: the package's own policy and the baselines.

A router sees what a gateway sees: the request's bytes (its RequestShape), its category and its
output budget, plus a snapshot of the pools. Only the oracle baseline reads the true prompt
token count. After a request completes, ``learn`` receives the backend's prompt token count, as
the LiteLLM success callback does.

- ``PolicyRouter`` (the product): the real ``Calibrator`` estimate + ``core.plan.plan_request``
  (the proxy's own entry), learning through the proxy's learner.
- ``StaticRatioRouter``: the same policy on ``ceil(bytes / 4.0)`` (the paper's cold start).
- ``OracleRouter``: the same policy on the true prompt tokens (an upper bound on routing).
- ``SinglePoolRouter``: every request to one pool (the homogeneous fleet).
Which instance inside a pool serves is the fleet's balancer (round robin or least loaded).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.estimator import Estimate, Estimator
from litellm_dualpool.core.plan import Plan, plan_request
from litellm_dualpool.core.policy import Decision, PolicySettings, PoolState, Reason
from litellm_dualpool.core.shape import RequestShape
from litellm_dualpool.core.tenant import ANONYMOUS_TENANT, ObservationTrust
from litellm_dualpool.state import InfluenceGuard, Learner, Observation


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request as the gateway receives it. ``true_prompt_tokens`` is for the oracle and
    for the backend only; honest routers do not read it."""

    index: int
    shape: RequestShape
    category: str
    output_budget_tokens: int
    true_prompt_tokens: int


class Router(Protocol):
    """Chooses a pool for each request; may learn from completed requests."""

    name: str

    def choose(self, request: SimRequest, pools: Sequence[PoolState]) -> Decision: ...

    def learn(self, request: SimRequest, prompt_tokens: int) -> None: ...


class _BudgetRouter:
    """Shared shape of the budget routers: an estimate, then the core's `plan_request`, the
    entry the proxy's engine calls too (same estimate and pools: same decision)."""

    name = "budget"

    def __init__(self, settings: PolicySettings | None = None, *, model_group: str = "model") -> None:
        self.settings = settings or PolicySettings()
        self.model_group = model_group
        self._keys: dict[str, CategoryKey] = {}

    def key(self, category: str) -> CategoryKey:
        """The calibration key of a category (one per model group and category)."""
        key = self._keys.get(category)
        if key is None:
            key = self._keys[category] = CategoryKey(self.model_group, category)
        return key

    def estimate(self, request: SimRequest) -> Estimate:
        raise NotImplementedError

    def plan(self, request: SimRequest, pools: Sequence[PoolState]) -> Plan:
        return plan_request(self.estimate(request), pools, self.settings,
                            plan_id=str(request.index))

    def choose(self, request: SimRequest, pools: Sequence[PoolState]) -> Decision:
        return self.plan(request, pools).decision

    def learn(self, request: SimRequest, prompt_tokens: int) -> None:
        return None

    def _fixed(self, request: SimRequest, prompt_tokens: int) -> Estimate:
        """An estimate without an error model: one prompt count for all three estimates."""
        return Estimate.of(request.shape, self.key(request.category),
                           request.output_budget_tokens, optimistic=prompt_tokens,
                           point=prompt_tokens, conservative=prompt_tokens)


class PolicyRouter(_BudgetRouter):
    """The package's dispatch: conservative calibrated estimate from bytes, learned online
    through the same learner (influence guard and bounds) as the proxy's. The simulated
    traffic is the operator's own: a trusted tenant."""

    name = "dual_pool"

    def __init__(self, settings: PolicySettings | None = None, *, calibrator: Calibrator | None = None,
                 model_group: str = "model") -> None:
        super().__init__(settings, model_group=model_group)
        self.calibrator = calibrator or Calibrator()
        self.estimator = Estimator(self.calibrator)
        self.learner = Learner(self.calibrator, InfluenceGuard())
        self._seq = itertools.count(1)

    def estimate(self, request: SimRequest) -> Estimate:
        return self.estimator.estimate_shape(request.shape, self.key(request.category),
                                             request.output_budget_tokens)

    def plan(self, request: SimRequest, pools: Sequence[PoolState]) -> Plan:
        """The proxy's tiered estimate (far: bytes alone), then the shared `plan_request`."""
        limits = sorted(p.max_model_len for p in pools)
        estimate = self.estimator.estimate_measured(
            request.shape, self.key(request.category), request.output_budget_tokens,
            limits=limits, headroom_fraction=self.settings.headroom_fraction)
        return plan_request(estimate, pools, self.settings, plan_id=str(request.index))

    def learn(self, request: SimRequest, prompt_tokens: int) -> None:
        seq = next(self._seq)
        self.learner.apply(Observation(self.key(request.category), request.shape, prompt_tokens,
                                       ANONYMOUS_TENANT, ObservationTrust.TRUSTED, "simulator",
                                       seq, seq))


class StaticRatioRouter(_BudgetRouter):
    """Budget from a fixed bytes-per-token ratio; never learns."""

    name = "static_ratio"

    def __init__(self, settings: PolicySettings | None = None, *, bytes_per_token: float = 4.0,
                 model_group: str = "model") -> None:
        super().__init__(settings, model_group=model_group)
        self.bytes_per_token = bytes_per_token

    def estimate(self, request: SimRequest) -> Estimate:
        return self._fixed(request, math.ceil(request.shape.total_bytes / self.bytes_per_token))


class OracleRouter(_BudgetRouter):
    """Budget from the true prompt token count (what no gateway knows before the backend)."""

    name = "oracle"

    def estimate(self, request: SimRequest) -> Estimate:
        return self._fixed(request, request.true_prompt_tokens)


class SinglePoolRouter:
    """Everything to one pool, as a homogeneous fleet behind a plain load balancer."""

    name = "homogeneous"

    def __init__(self, pool: str) -> None:
        self.pool = pool

    def choose(self, request: SimRequest, pools: Sequence[PoolState]) -> Decision:
        limit = next((p.max_model_len for p in pools if p.name == self.pool), 0)
        return Decision(self.pool, Reason.FITS, request.output_budget_tokens, limit, request.category)

    def learn(self, request: SimRequest, prompt_tokens: int) -> None:
        return None
