"""The routing strategy for users who want pool choice and the pick in one: the healthy list
(which the callback's filter has already narrowed to the planned pool) goes to the deployment
with the fewest requests in flight, ties broken at random.

A registered strategy picks for every model group, dual-pool or not; groups without pools get
the same least-in-flight pick over their healthy deployments.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from litellm.types.router import CustomRoutingStrategyBase

from litellm_dualpool.proxy.record import record_in
from litellm_dualpool.proxy.router_api import healthy_deployments


class DualPoolRoutingStrategy(CustomRoutingStrategyBase):  # type: ignore[misc]  # LiteLLM is not followed by mypy (Any base)
    def __init__(self, router: Any, callback: Any, *, rng: random.Random | None = None) -> None:
        self.router = router
        self.callback = callback
        self.engine = callback.engine
        self._rng = rng or random.Random()

    async def async_get_available_deployment(
            self, model: str, messages: list[dict[str, str]] | None = None,
            input: str | list[Any] | None = None, specific_deployment: bool | None = False,
            request_kwargs: dict[str, Any] | None = None) -> dict[str, Any] | None:
        request_kwargs = request_kwargs if request_kwargs is not None else {}
        healthy = await healthy_deployments(self.router, model, request_kwargs, messages, input)
        return self.pick(healthy, request_kwargs)

    def get_available_deployment(
            self, model: str, messages: list[dict[str, str]] | None = None,
            input: str | list[Any] | None = None, specific_deployment: bool | None = False,
            request_kwargs: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Synchronous paths (rare on the proxy): the group's deployments, narrowed as the
        callback's filter narrows them (its refusals included)."""
        request_kwargs = request_kwargs if request_kwargs is not None else {}
        deployments = [dict(d) for d in self.router.get_model_list(model_name=model) or []]
        return self.pick(self.callback.narrow(model, deployments, messages, request_kwargs),
                         request_kwargs)

    def pick(self, healthy: Sequence[dict[str, Any]],
             request_kwargs: dict[str, Any]) -> dict[str, Any] | None:
        if not healthy:
            return None
        inflight = self.engine.inflight

        def load(deployment: dict[str, Any]) -> int:
            count: int = inflight.deployment(str((deployment.get("model_info") or {}).get("id")))
            return count

        lowest = min(load(d) for d in healthy)
        chosen = self._rng.choice([d for d in healthy if load(d) == lowest])
        metadata = request_kwargs.get("litellm_metadata") or request_kwargs.get("metadata") or {}
        record = record_in(metadata if isinstance(metadata, dict) else None)
        deployment_id = (chosen.get("model_info") or {}).get("id")
        if record is not None and isinstance(deployment_id, str):
            inflight.assign(record.plan.id, deployment_id)
        return chosen
