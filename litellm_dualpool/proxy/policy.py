"""What one caller (API key / team) may ask of the router: the seam for per-tenant policy.

`resolve_policy` reads the caller's policy through :mod:`litellm_dualpool.tenancy`: the plugin's
defaults (``dualpool_settings.overrides`` and ``tenancy.default_policy``), then the team's, then
the key's ``dualpool_policy`` metadata entry. An invalid entry raises
:class:`~litellm_dualpool.tenancy.TenantPolicyError` naming the field (the request is refused).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litellm_dualpool.config import DualPoolSettings
from litellm_dualpool.tenancy import (
    POLICY_METADATA_KEY,
    TenantPolicy,
    TenantPolicyError,
    resolve_tenant_policy,
)

__all__ = ["POLICY_METADATA_KEY", "PolicyResolver", "TenantPolicy", "TenantPolicyError",
           "resolve_policy"]

PolicyResolver = Callable[[Any, DualPoolSettings], TenantPolicy]


def resolve_policy(user_api_key_dict: Any, settings: DualPoolSettings) -> TenantPolicy:
    """The caller's policy: defaults, then its team's entry, then its key's entry."""
    return resolve_tenant_policy(user_api_key_dict, settings.tenancy,
                                 allow_force_pool=settings.overrides.allow_force_pool,
                                 allow_category=settings.overrides.allow_category)
