"""Fixtures for the in-process plugin tests (helpers live in plugin_env.py)."""

from __future__ import annotations

from typing import Any

import litellm
import pytest
import respx
from plugin_env import LONG_BASE, LONG_LEN, SHORT_BASE, SHORT_LEN, Env, backend, model_list
from prometheus_client import CollectorRegistry

from litellm_dualpool.config import load_plugin_config
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy import DualPoolCallback, install

_CALLBACK_LISTS = ("_async_success_callback", "_async_failure_callback", "success_callback",
                   "failure_callback", "input_callback", "_async_input_callback", "callbacks")


@pytest.fixture
def make_env() -> Any:
    """Factory: make_env(settings={...}, short_usage=True, install_router=True) -> Env."""
    made: list[tuple[Env, list[Any]]] = []

    def factory(settings: dict[str, Any] | None = None, *, usage: bool = True,
                install_router: bool = True, short_len: int = SHORT_LEN,
                short_info: dict[str, Any] | None = None) -> Env:
        config = load_plugin_config({"model_list": model_list(short_len=short_len, short_info=short_info),
                                     "dualpool_settings": settings or {}})
        registry = CollectorRegistry()
        plugin = DualPoolCallback(config, metrics=DualPoolMetrics(registry),
                                  router_provider=lambda: None)
        saved = list(litellm.callbacks)
        litellm.callbacks = [*saved, plugin]
        litellm._async_success_callback.append(plugin)
        litellm._async_failure_callback.append(plugin)
        litellm.disable_aiohttp_transport = True  # respx mocks httpx, LiteLLM's default is aiohttp
        router = litellm.Router(model_list=model_list(short_len=short_len, short_info=short_info), num_retries=0)
        if install_router:
            install(router, plugin)
        mock = respx.mock(assert_all_called=False)
        mock.start()
        hits: list[str] = []
        short = mock.post(f"{SHORT_BASE}/chat/completions").mock(
            side_effect=backend(SHORT_BASE, short_len, hits, "short", usage=usage))
        long = mock.post(f"{LONG_BASE}/chat/completions").mock(
            side_effect=backend(LONG_BASE, LONG_LEN, hits, "long", usage=usage))
        env = Env(plugin, router, mock, registry, short, long, pool_hits=hits)
        made.append((env, saved))
        return env

    yield factory
    for env, saved in made:
        env.mock.stop()
        litellm.callbacks = saved
        for name in _CALLBACK_LISTS:  # LiteLLM fans callbacks out into these lists once
            registered = getattr(litellm, name, None)
            if isinstance(registered, list):
                registered[:] = [c for c in registered if c is not env.plugin]
    litellm.disable_aiohttp_transport = False


@pytest.fixture
def env(make_env: Any) -> Env:
    return make_env()
