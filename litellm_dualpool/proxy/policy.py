"""What one caller (API key / team) may ask of the router: the seam for per-tenant policy.

`resolve_policy` builds a `TenantPolicy` from the plugin's defaults and, when present, the key's
or team's metadata entry ``dualpool_policy`` (key wins over team). Per-tenant output budgets,
fixed categories and long-pool rights plug in here (issue 7) without touching the routing code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from litellm_dualpool.config import DualPoolSettings

#: Metadata entry (on a key or a team) holding a caller's policy.
POLICY_METADATA_KEY = "dualpool_policy"
_BOOL_FIELDS = ("allow_force_pool", "allow_category")


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """allowed_pools: None means every pool; default_output_tokens None means the plugin's."""

    allow_force_pool: bool = False
    allow_category: bool = True
    allowed_pools: frozenset[str] | None = None
    default_output_tokens: int | None = None


PolicyResolver = Callable[[Any, DualPoolSettings], TenantPolicy]


def _entry(metadata: object) -> Mapping[str, Any]:
    if isinstance(metadata, Mapping):
        entry = metadata.get(POLICY_METADATA_KEY)
        if isinstance(entry, Mapping):
            return entry
    return {}


def resolve_policy(user_api_key_dict: Any, settings: DualPoolSettings) -> TenantPolicy:
    """Defaults from ``dualpool_settings.overrides``, then the team's, then the key's entry."""
    policy = TenantPolicy(allow_force_pool=settings.overrides.allow_force_pool,
                          allow_category=settings.overrides.allow_category)
    for metadata in (getattr(user_api_key_dict, "team_metadata", None),
                     getattr(user_api_key_dict, "metadata", None)):
        entry = _entry(metadata)
        changes: dict[str, Any] = {k: entry[k] for k in _BOOL_FIELDS if type(entry.get(k)) is bool}
        pools = entry.get("allowed_pools")
        if isinstance(pools, list) and all(isinstance(p, str) for p in pools):
            changes["allowed_pools"] = frozenset(pools)
        budget = entry.get("default_output_tokens")
        if type(budget) is int and budget >= 0:
            changes["default_output_tokens"] = budget
        policy = replace(policy, **changes)
    return policy
