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

from litellm_dualpool.proxy.engine import STASH_KEY
from litellm_dualpool.proxy.install import healthy_deployments


class DualPoolRoutingStrategy(CustomRoutingStrategyBase):  # type: ignore[misc]
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
        """Synchronous paths (rare on the proxy): the group's deployments, narrowed the same way."""
        request_kwargs = request_kwargs if request_kwargs is not None else {}
        deployments = [dict(d) for d in self.router.get_model_list(model_name=model) or []]
        group = self.engine.group_for(model)
        stash = self.callback._stash_for_filter(
            group, messages, request_kwargs,
            recovery=model in self.engine.recovery_groups) if group else None
        if stash is not None:
            deployments = self.engine.choose(model, deployments, stash)
        return self.pick(deployments, request_kwargs)

    def pick(self, healthy: Sequence[dict[str, Any]],
             request_kwargs: dict[str, Any]) -> dict[str, Any] | None:
        if not healthy:
            return None
        inflight = self.engine.inflight

        def load(deployment: dict[str, Any]) -> int:
            return inflight.deployment(str((deployment.get("model_info") or {}).get("id")))

        lowest = min(load(d) for d in healthy)
        chosen = self._rng.choice([d for d in healthy if load(d) == lowest])
        metadata = request_kwargs.get("litellm_metadata") or request_kwargs.get("metadata") or {}
        stash = metadata.get(STASH_KEY) if isinstance(metadata, dict) else None
        deployment_id = (chosen.get("model_info") or {}).get("id")
        if isinstance(stash, dict) and "id" in stash and isinstance(deployment_id, str):
            inflight.assign(stash["id"], deployment_id)
        return chosen
