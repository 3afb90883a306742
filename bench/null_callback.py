"""A LiteLLM callback with the dual-pool plugin's hooks and no work in them: configuration e of
bench/proxy_overhead.py. LiteLLM spends CPU on calling any callback's hooks (building logging
payloads, scheduling the success event, calling the filter); that part no plugin can avoid, so
the plugin's own cost is c - e and the price of having a callback at all is e - a.

The proxy imports it as `null_callback.proxy_handler_instance` from the directory of its config
file (the bench copies this file there).
"""

from __future__ import annotations

from typing import Any

from litellm.integrations.custom_logger import CustomLogger


class NullCallback(CustomLogger):
    """Every hook the plugin implements on the request path, returning its input unchanged."""

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        return data

    async def async_filter_deployments(self, model: str, healthy_deployments: list[dict[str, Any]],
                                       messages: Any, request_kwargs: dict[str, Any] | None = None,
                                       parent_otel_span: Any = None) -> list[dict[str, Any]]:
        return healthy_deployments

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        return None

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any,
                                      start_time: Any, end_time: Any) -> None:
        return None

    async def async_post_call_failure_hook(self, request_data: dict[str, Any],
                                           original_exception: Exception, user_api_key_dict: Any,
                                           traceback_str: str | None = None) -> None:
        return None

    async def async_post_call_response_headers_hook(
            self, data: dict[str, Any], user_api_key_dict: Any, response: Any,
            request_headers: dict[str, str] | None = None,
            litellm_call_info: dict[str, Any] | None = None) -> dict[str, str] | None:
        return None


class NarrowingCallback(NullCallback):
    """Bisection variant: the filter keeps one deployment, as the plugin keeps one pool."""

    async def async_filter_deployments(self, model: str, healthy_deployments: list[dict[str, Any]],
                                       messages: Any, request_kwargs: dict[str, Any] | None = None,
                                       parent_otel_span: Any = None) -> list[dict[str, Any]]:
        return healthy_deployments[:1]


#: A plan the size of the plugin's (its keys and value types), for the bisection variant below.
_PLAN = {"id": "dp-1", "group": "llama", "category": "prose", "budget": 9000, "prompt": 8000,
         "point": 7600, "output": 16, "shape": [32768, 0, 8, 0, 0, 0, None, "prose", True, False,
                                                0, [5000, 300, 100, 800, 600, 0, 20, 0]],
         "pool": "short", "reason": "fits", "preferred": "short", "allowed": None,
         "tenant": None, "trust": "trusted", "recovered_from": None, "learned": False,
         "stream": False}


class PlanCallback(NullCallback):
    """Bisection variant: the pre-call hook puts a plan into the request's metadata."""

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        metadata = data.setdefault("metadata", {})
        if isinstance(metadata, dict):
            metadata["litellm_dualpool"] = dict(_PLAN)
        return data


class HeadersCallback(NullCallback):
    """Bisection variant: two response headers, as the plugin returns."""

    async def async_post_call_response_headers_hook(
            self, data: dict[str, Any], user_api_key_dict: Any, response: Any,
            request_headers: dict[str, str] | None = None,
            litellm_call_info: dict[str, Any] | None = None) -> dict[str, str] | None:
        return {"x-dualpool-pool": "short", "x-dualpool-budget-tokens": "9000"}


proxy_handler_instance = NullCallback()
narrowing_instance = NarrowingCallback()
plan_instance = PlanCallback()
headers_instance = HeadersCallback()
