"""The master key (LiteLLM's proxy_admin role) is the operator: its usage is trusted by default,
so a single-key gateway calibrates at full speed while virtual keys stay under the guard."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litellm_dualpool.tenancy import ObservationTrust, TenancyConfig, resolve_tenant_policy


@dataclass
class Key:
    api_key: str
    user_role: Any = None
    team_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    team_metadata: dict[str, Any] = field(default_factory=dict)


class Role:
    value = "proxy_admin"  # like LiteLLM's LitellmUserRoles.PROXY_ADMIN


def _trust(key: Key, config: TenancyConfig | None = None) -> ObservationTrust:
    policy = resolve_tenant_policy(key, config or TenancyConfig(), allow_force_pool=False,
                                   allow_category=True)
    return policy.observation_trust


def test_master_key_is_trusted_and_virtual_keys_are_normal() -> None:
    assert _trust(Key("hashed-master", user_role=Role())) is ObservationTrust.TRUSTED
    assert _trust(Key("hashed-master", user_role="proxy_admin")) is ObservationTrust.TRUSTED
    assert _trust(Key("hashed-team-key", user_role="internal_user")) is ObservationTrust.NORMAL


def test_admin_trust_is_configurable_and_a_key_policy_still_wins() -> None:
    strict = TenancyConfig(admin_observation_trust=ObservationTrust.NORMAL)
    assert _trust(Key("hashed-master", user_role=Role()), strict) is ObservationTrust.NORMAL
    pinned = Key("hashed-master", user_role=Role(),
                 metadata={"dualpool_policy": {"observation_trust": "none"}})
    assert _trust(pinned) is ObservationTrust.NONE
