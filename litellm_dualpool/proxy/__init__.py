"""The LiteLLM glue, the only package that imports litellm.

``litellm_settings: {callbacks: ["litellm_dualpool.proxy_handler_instance"]}`` resolves to
`proxy_handler_instance` here: built on first access from the proxy's own YAML, validated then
(an invalid config aborts the proxy's start with the path of the offending key).
"""

from __future__ import annotations

from typing import Any

from litellm_dualpool.proxy.callback import DualPoolCallback
from litellm_dualpool.proxy.install import install
from litellm_dualpool.proxy.router_api import install_strategy
from litellm_dualpool.proxy.strategy import DualPoolRoutingStrategy

__all__ = ["DualPoolCallback", "DualPoolRoutingStrategy", "install", "install_strategy"]


def __getattr__(name: str) -> Any:
    # The one module-level instance LiteLLM's YAML must name; created lazily, once.
    if name == "proxy_handler_instance":
        instance = DualPoolCallback.from_proxy_environment()
        globals()[name] = instance
        return instance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
