"""The one place that knows LiteLLM's router API by version.

- LiteLLM 1.106 (classic Python router): ``set_custom_routing_strategy``; a custom strategy lists
  healthy deployments with ``async_get_healthy_deployments``.
- LiteLLM 1.110 (Rust-core router): ``register_plugin`` (the old call is deprecated); a custom
  strategy receives no healthy list and asks ``select(..., kind="healthy")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_rust_core(router: Any) -> bool:
    """True for the Rust-core router of LiteLLM >= 1.110 (it has ``register_plugin``)."""
    return callable(getattr(router, "register_plugin", None))


def install_strategy(router: Any, strategy: Any) -> str:
    """Make `strategy` (a CustomRoutingStrategyBase) pick every deployment; returns the API used."""
    if is_rust_core(router):
        router.register_plugin(strategy)
        return "register_plugin"
    router.set_custom_routing_strategy(strategy)
    return "set_custom_routing_strategy"


async def healthy_deployments(router: Any, model: str, request_kwargs: dict[str, Any],
                              messages: Any = None, input: Any = None) -> list[dict[str, Any]]:
    """What the router would pick among for `model` (cooldowns, health and callbacks applied)."""
    if is_rust_core(router):
        found = await router.select(model, request_kwargs, kind="healthy", messages=messages)
    else:
        found = await router.async_get_healthy_deployments(
            model=model, request_kwargs=request_kwargs, messages=messages, input=input)
    if isinstance(found, Mapping):
        return [dict(found)]
    return [dict(d) for d in found or ()]
