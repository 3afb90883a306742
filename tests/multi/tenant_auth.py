"""Test-only `custom_auth` for the proxy: fixed API keys mapped to teams and policies.

LiteLLM's DB-backed virtual keys need Prisma engines downloaded at run time (impossible offline),
so the end-to-end tests authenticate with ``general_settings.custom_auth:
tenant_auth.user_api_key_auth``, which fills the same ``UserAPIKeyAuth`` fields (team id, key
alias, key and team metadata) that a database key would. Never use fixed keys like these in
production. Like the shipped ``proxy_config/tenant_auth.py``, the master key is the proxy admin
and the only key that reads ``/metrics``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import HTTPException, Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth
from starlette.routing import get_route_path

TENANTS: dict[str, dict[str, Any]] = {
    "sk-test-alpha-0000000001": {"team_id": "team-alpha", "key_alias": "alpha"},
    "sk-test-beta-00000000001": {"team_id": "team-beta", "key_alias": "beta"},
    "sk-test-mallory-00000001": {"team_id": "team-mallory", "key_alias": "mallory"},
    "sk-test-ops-000000000001": {
        "team_id": "team-ops", "key_alias": "ops",  # the operator's own application
        "metadata": {"dualpool_policy": {"observation_trust": "trusted",
                                         "expose_budget_header": True}}},
    "sk-test-batch-0000000001": {
        "team_id": "team-batch", "key_alias": "batch",
        "team_metadata": {"dualpool_policy": {"allow_long_pool": False}}},
    "sk-test-probe-0000000001": {  # measures budgets without teaching the shared state
        "team_id": "team-probe", "key_alias": "probe",
        "metadata": {"dualpool_policy": {"observation_trust": "none",
                                         "expose_budget_header": True}}},
    "sk-test-broken-000000001": {
        "team_id": "team-broken", "key_alias": "broken",
        "metadata": {"dualpool_policy": {"allow_long_pool": "sometimes"}}},
}


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    key = api_key.removeprefix("Bearer ").strip()
    if key and key == os.environ.get("LITELLM_MASTER_KEY"):
        return UserAPIKeyAuth(api_key=key, user_role=LitellmUserRoles.PROXY_ADMIN)
    entry = TENANTS.get(key)
    if entry is None:  # an HTTPException keeps its status (others go to LiteLLM's DB checks)
        raise HTTPException(status_code=401, detail="unknown API key")
    if get_route_path(request.scope).startswith("/metrics"):
        raise HTTPException(status_code=403, detail="/metrics is for the proxy admin")
    return UserAPIKeyAuth(api_key=key, **entry)
