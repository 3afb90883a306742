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
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

import yaml
from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

TENANTS_FILE_ENV = "DUALPOOL_TENANTS_FILE"
DEFAULT_TENANTS_FILE = Path(__file__).with_name("tenants.yaml")

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


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """LiteLLM's custom_auth hook: the master key is the admin; tenant keys map to their team."""
    key = api_key.removeprefix("Bearer ").strip()
    master = os.environ.get("LITELLM_MASTER_KEY", "")
    if master and hmac.compare_digest(key, master):
        return UserAPIKeyAuth(api_key=key, user_role=LitellmUserRoles.PROXY_ADMIN)
    digest = _digest(key)
    for candidate, tenant in _current_tenants().items():
        if hmac.compare_digest(candidate, digest):
            return UserAPIKeyAuth(
                api_key=key,
                key_alias=tenant.get("key_alias"),
                team_id=tenant.get("team_id"),
                metadata=dict(tenant.get("metadata") or {}),
                team_metadata=dict(tenant.get("team_metadata") or {}),
            )
    raise PermissionError("invalid API key")
