"""Where the running proxy keeps things: its router is ``litellm.proxy.proxy_server.llm_router``;
its config file path is ``user_config_file_path`` there, else ``CONFIG_FILE_PATH`` or the
``WORKER_CONFIG`` JSON (our ``LITELLM_DUALPOOL_CONFIG`` overrides them all). Never imports the
proxy itself: outside a proxy both answers are None."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from litellm_dualpool.config import CONFIG_ENV

_PROXY_MODULE = "litellm.proxy.proxy_server"


def proxy_router() -> Any | None:
    """The running proxy's router, or None outside a proxy (never imports the proxy itself)."""
    module = sys.modules.get(_PROXY_MODULE)
    return getattr(module, "llm_router", None) if module is not None else None


def proxy_config_path() -> str | None:
    """The LiteLLM YAML the proxy is loading: our env override, else the proxy's own path."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return explicit
    module = sys.modules.get(_PROXY_MODULE)
    path = getattr(module, "user_config_file_path", None) if module is not None else None
    if isinstance(path, str) and path:
        return path
    if os.environ.get("CONFIG_FILE_PATH"):
        return os.environ["CONFIG_FILE_PATH"]
    try:
        worker = json.loads(os.environ.get("WORKER_CONFIG") or "{}")
    except ValueError:
        return None
    config = worker.get("config") if isinstance(worker, dict) else None
    return config if isinstance(config, str) and config else None
