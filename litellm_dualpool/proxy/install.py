"""Prepare a LiteLLM router for the plugin: the hidden recovery groups (proxy/recovery.py) and,
with ``routing: strategy``, the plugin's routing strategy (registered as proxy/router_api.py
says for the running LiteLLM)."""

from __future__ import annotations

import logging
from typing import Any

from litellm_dualpool.proxy.recovery import add_recovery_groups, map_context_rejections
from litellm_dualpool.proxy.router_api import install_strategy
from litellm_dualpool.proxy.strategy import DualPoolRoutingStrategy

logger = logging.getLogger("litellm_dualpool")


def install(router: Any, callback: Any) -> None:
    """Prepare a router for the plugin: the hidden recovery groups and, with
    ``routing: strategy``, the plugin's routing strategy. Idempotent per router."""
    engine = callback.engine
    if engine.settings.recovery.enabled:
        map_context_rejections()
        added = add_recovery_groups(router, engine)
        if added:
            logger.info("litellm-dualpool: recovery groups %s", ", ".join(added))
    if engine.settings.routing == "strategy":
        api = install_strategy(router, DualPoolRoutingStrategy(router, callback))
        logger.info("litellm-dualpool: routing strategy installed with %s", api)
