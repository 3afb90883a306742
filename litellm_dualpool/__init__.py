"""litellm-dualpool: dual-pool token-budget routing for vLLM fleets behind the LiteLLM proxy.

Enable it in the proxy's YAML with
``litellm_settings: {callbacks: ["litellm_dualpool.proxy_handler_instance"]}``.
The instance is created lazily so that importing the core never imports litellm.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # PEP 562: LiteLLM resolves "litellm_dualpool.proxy_handler_instance" with getattr.
    if name == "proxy_handler_instance":
        from litellm_dualpool.proxy import proxy_handler_instance

        return proxy_handler_instance
    raise AttributeError(f"module 'litellm_dualpool' has no attribute {name!r}")
