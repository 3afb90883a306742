"""Routers the fleet simulator can run: the package's own policy and the baselines.

A router sees what a gateway sees: the request's bytes (its RequestShape), its category and its
output budget, plus a snapshot of the pools. Only the oracle baseline reads the true prompt
token count. After a request completes, ``learn`` receives the backend's prompt token count, as
the LiteLLM success callback does.

- ``PolicyRouter`` (the product): the real ``Calibrator`` estimate + ``core.policy.decide``.
- ``StaticRatioRouter``: the same policy on ``ceil(bytes / 4.0)`` (the paper's cold start).
- ``OracleRouter``: the same policy on the true prompt tokens (an upper bound on routing).
- ``SinglePoolRouter``: every request to one pool (the homogeneous fleet).
Which instance inside a pool serves is the fleet's balancer (round robin or least loaded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from litellm_dualpool.core.budget import TokenBudget
from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.policy import Decision, PolicySettings, PoolState, Reason, decide
from litellm_dualpool.core.shape import RequestShape


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
    """Shared shape of the budget routers: estimate a prompt, add the output budget, decide."""

    name = "budget"

    def __init__(self, settings: PolicySettings | None = None, *, model_group: str = "model") -> None:
        self.settings = settings or PolicySettings()
        self.model_group = model_group

    def prompt_estimates(self, request: SimRequest) -> tuple[int, int, int]:
        """(optimistic, point, conservative) prompt estimates; one number three times without
        an error model."""
        raise NotImplementedError

    def choose(self, request: SimRequest, pools: Sequence[PoolState]) -> Decision:
        optimistic, point, conservative = self.prompt_estimates(request)
        budget = TokenBudget(prompt_tokens=conservative, output_tokens=request.output_budget_tokens,
                             prompt_tokens_point=point,
                             prompt_tokens_optimistic=optimistic)  # what the proxy's estimator builds
        return decide(budget.total_tokens, pools, self.settings, category=request.category,
                      floor_tokens=budget.refusal_floor_tokens)

    def learn(self, request: SimRequest, prompt_tokens: int) -> None:
        return None


class PolicyRouter(_BudgetRouter):
    """The package's dispatch: conservative calibrated estimate from bytes, learned online."""

    name = "dual_pool"

    def __init__(self, settings: PolicySettings | None = None, *, calibrator: Calibrator | None = None,
                 model_group: str = "model") -> None:
        super().__init__(settings, model_group=model_group)
        self.calibrator = calibrator or Calibrator()
        self._keys: dict[str, CategoryKey] = {}

    def key(self, category: str) -> CategoryKey:
        """The calibration key of a category (one per model group and category)."""
        key = self._keys.get(category)
        if key is None:
            key = self._keys[category] = CategoryKey(self.model_group, category)
        return key

    def prompt_estimates(self, request: SimRequest) -> tuple[int, int, int]:
        return self.calibrator.estimate_range(self.key(request.category), request.shape)

    def learn(self, request: SimRequest, prompt_tokens: int) -> None:
        self.calibrator.observe(self.key(request.category), request.shape, prompt_tokens)


class StaticRatioRouter(_BudgetRouter):
    """Budget from a fixed bytes-per-token ratio; never learns."""

    name = "static_ratio"

    def __init__(self, settings: PolicySettings | None = None, *, bytes_per_token: float = 4.0,
                 model_group: str = "model") -> None:
        super().__init__(settings, model_group=model_group)
        self.bytes_per_token = bytes_per_token

    def prompt_estimates(self, request: SimRequest) -> tuple[int, int, int]:
        estimate = math.ceil(request.shape.total_bytes / self.bytes_per_token)
        return estimate, estimate, estimate


class OracleRouter(_BudgetRouter):
    """Budget from the true prompt token count (what no gateway knows before the backend)."""

    name = "oracle"

    def prompt_estimates(self, request: SimRequest) -> tuple[int, int, int]:
        tokens = request.true_prompt_tokens
        return tokens, tokens, tokens


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
