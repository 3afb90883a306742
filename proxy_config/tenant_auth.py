"""Per-tenant API keys for a LiteLLM proxy without a database (an example ``custom_auth``).

LiteLLM's virtual keys need its Prisma database; this module gives each team its own key from a
small YAML file instead, and returns the same ``UserAPIKeyAuth`` fields (``team_id``,
``key_alias``, ``metadata``, ``team_metadata``) that database keys carry, so the plugin's
per-tenant policy (``metadata.dualpool_policy``) works the same way. Enable it with::

    general_settings:
      master_key: os.environ/LITELLM_MASTER_KEY
      custom_auth: tenant_auth.user_api_key_auth     # this file, next to the YAML

Keys are stored as SHA-256 digests only (``tenants.example.yaml``); the file is read from
``$DUALPOOL_TENANTS_FILE``, else ``tenants.yaml`` beside this module, and re-read when it
changes. The master key (``$LITELLM_MASTER_KEY``) is accepted as the proxy admin. Print a
digest with ``python -c "import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())" sk-...``.

``/metrics`` is the admin's. LiteLLM hands that route to ``custom_auth`` too (while
``litellm_settings.require_auth_for_metrics_endpoint`` keeps its default, true) and serves it
to whatever key the function accepts; its ``litellm_*`` series carry every tenant's key alias,
hashed key, client IP and the backends' ``api_base``. So a tenant key is refused there (401), and
the master key or an entry with ``metrics_only: true`` (a scrape key for Prometheus, refused on
every other route) reads it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

import yaml
from fastapi import HTTPException, Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth
from starlette.routing import get_route_path

TENANTS_FILE_ENV = "DUALPOOL_TENANTS_FILE"
DEFAULT_TENANTS_FILE = Path(__file__).with_name("tenants.yaml")
#: LiteLLM's Prometheus route (mounted; ``/metrics`` redirects to ``/metrics/``).
METRICS_ROUTE = "/metrics"

_cache: dict[str, Any] = {"path": None, "mtime": None, "tenants": {}}


def _tenants_path() -> Path:
    return Path(os.environ.get(TENANTS_FILE_ENV) or DEFAULT_TENANTS_FILE)


def load_tenants(path: Path) -> dict[str, dict[str, Any]]:
    """key digest -> tenant entry; raises ValueError naming the entry that is malformed."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    tenants: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(data.get("tenants") or []):
        digest = str(entry.get("key_sha256", "")).lower() if isinstance(entry, dict) else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path}: tenants[{i}].key_sha256 must be a SHA-256 hex digest")
        tenants[digest] = entry
    return tenants


def _current_tenants() -> dict[str, dict[str, Any]]:
    path = _tenants_path()
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return {}
    if _cache["path"] != path or _cache["mtime"] != mtime:
        _cache.update(path=path, mtime=mtime, tenants=load_tenants(path))
    tenants: dict[str, dict[str, Any]] = _cache["tenants"]
    return tenants


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_metrics_route(request: Request) -> bool:
    """Whether the request is for LiteLLM's ``/metrics`` (or below it), root_path removed."""
    path = get_route_path(request.scope)
    return path == METRICS_ROUTE or path.startswith(METRICS_ROUTE + "/")


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """LiteLLM's custom_auth hook: the master key is the admin; tenant keys map to their team.

    ``/metrics`` admits the admin and ``metrics_only`` entries alone; a ``metrics_only`` entry is
    refused everywhere else. Refusals are HTTPExceptions, which LiteLLM answers with their
    status (a 401 for an unknown key, a 403 for a key on a route it may not use; ``/metrics``
    answers 401 to both). LiteLLM sends any other exception through its database-outage
    classifier first: without the prisma package that fails, and an unknown key got a 500."""
    key = api_key.removeprefix("Bearer ").strip()
    master = os.environ.get("LITELLM_MASTER_KEY", "")
    if master and hmac.compare_digest(key, master):
        return UserAPIKeyAuth(api_key=key, user_role=LitellmUserRoles.PROXY_ADMIN)
    tenant = _tenant_of(key)
    if tenant is None:
        raise HTTPException(status_code=401, detail="invalid API key")
    metrics_only, metrics = tenant.get("metrics_only") is True, is_metrics_route(request)
    if metrics and not metrics_only:
        raise HTTPException(status_code=403,
                            detail="/metrics is for the proxy admin and metrics_only keys")
    if metrics_only and not metrics:
        raise HTTPException(status_code=403, detail="a metrics_only key may read /metrics only")
    return UserAPIKeyAuth(
        api_key=key,
        key_alias=tenant.get("key_alias"),
        team_id=tenant.get("team_id"),
        metadata=dict(tenant.get("metadata") or {}),
        team_metadata=dict(tenant.get("team_metadata") or {}),
    )


def _tenant_of(key: str) -> dict[str, Any] | None:
    """The tenant entry whose digest matches `key` (constant-time comparisons), else None."""
    digest = _digest(key)
    found = None
    for candidate, tenant in _current_tenants().items():
        if hmac.compare_digest(candidate, digest):
            found = tenant
    return found
