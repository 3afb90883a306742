"""Per-tenant policy from key and team metadata: layering, errors that name the field, identity."""

from __future__ import annotations

import pytest
from litellm.proxy._types import UserAPIKeyAuth

from litellm_dualpool.tenancy import (
    ANONYMOUS_TENANT,
    ObservationTrust,
    TenancyConfig,
    TenantPolicy,
    TenantPolicyError,
    resolve_tenant_policy,
    tenant_of,
    tenant_of_event_metadata,
)

pytestmark = pytest.mark.litellm_compat


def resolve(auth: object, tenancy: TenancyConfig | None = None, **switches: bool) -> TenantPolicy:
    return resolve_tenant_policy(auth, tenancy or TenancyConfig(),
                                 allow_force_pool=switches.get("allow_force_pool", False),
                                 allow_category=switches.get("allow_category", True))


def test_a_key_without_policy_gets_the_defaults() -> None:
    policy = resolve(UserAPIKeyAuth(api_key="sk-plain-key-0001"))
    assert policy == TenantPolicy(observation_trust=ObservationTrust.NORMAL,
                                  tenant=policy.tenant)
    assert policy.tenant.startswith("k") and policy.tenant != ANONYMOUS_TENANT


def test_requests_without_key_or_team_are_the_anonymous_trusted_tenant() -> None:
    policy = resolve(UserAPIKeyAuth())
    assert policy.tenant == ANONYMOUS_TENANT
    assert policy.observation_trust is ObservationTrust.TRUSTED


def test_key_entry_overrides_team_entry_field_by_field() -> None:
    auth = UserAPIKeyAuth(
        api_key="sk-acme-key-0001", team_id="acme",
        team_metadata={"dualpool_policy": {"allow_long_pool": False, "category": "acme",
                                           "default_output_tokens": 256}},
        metadata={"dualpool_policy": {"default_output_tokens": 64, "observation_trust": "none"}})
    policy = resolve(auth)
    assert policy.allow_long_pool is False
    assert policy.category == "acme"
    assert policy.default_output_tokens == 64
    assert policy.observation_trust is ObservationTrust.NONE


def test_default_policy_applies_to_tenants_without_entries() -> None:
    tenancy = TenancyConfig.model_validate(
        {"default_policy": {"allow_long_pool": False, "observation_trust": "none"}})
    assert resolve(UserAPIKeyAuth(api_key="sk-x-0000000001"), tenancy).allow_long_pool is False
    granted = UserAPIKeyAuth(api_key="sk-x-0000000002",
                             metadata={"dualpool_policy": {"allow_long_pool": True}})
    policy = resolve(granted, tenancy)
    assert policy.allow_long_pool is True
    assert policy.observation_trust is ObservationTrust.NONE


@pytest.mark.parametrize(("entry", "path"), [
    ({"allow_long_pool": "sometimes"}, "key metadata.dualpool_policy.allow_long_pool"),
    ({"default_output_tokens": -5}, "key metadata.dualpool_policy.default_output_tokens"),
    ({"observation_trust": "full"}, "key metadata.dualpool_policy.observation_trust"),
    ({"long_pool": False}, "key metadata.dualpool_policy.long_pool"),
    ({"category": "has space"}, "key metadata.dualpool_policy.category"),
    ({"expose_budget_header": "yes"}, "key metadata.dualpool_policy.expose_budget_header"),
    ("yes", "key metadata.dualpool_policy"),
])
def test_an_invalid_entry_is_an_error_naming_its_field(entry: object, path: str) -> None:
    auth = UserAPIKeyAuth(api_key="sk-bad-000000001", metadata={"dualpool_policy": entry})
    with pytest.raises(TenantPolicyError) as caught:
        resolve(auth)
    assert caught.value.path == path
    assert path in str(caught.value)


def test_team_errors_name_the_team() -> None:
    auth = UserAPIKeyAuth(team_id="t", team_metadata={"dualpool_policy": {"allowed_pools": 3}})
    with pytest.raises(TenantPolicyError, match=r"team metadata\.dualpool_policy\.allowed_pools"):
        resolve(auth)


@pytest.mark.parametrize(("policy", "pools", "expected"), [
    (TenantPolicy(), ["short", "long"], None),
    (TenantPolicy(allow_long_pool=False), ["short", "long"], frozenset({"short"})),
    (TenantPolicy(allow_long_pool=False), ["short", "mid", "long"], frozenset({"short", "mid"})),
    (TenantPolicy(allowed_pools=frozenset({"long"})), ["short", "long"], frozenset({"long"})),
    (TenantPolicy(allowed_pools=frozenset({"long"}), allow_long_pool=False), ["short", "long"],
     frozenset()),
])
def test_pools_for(policy: TenantPolicy, pools: list[str], expected: frozenset[str] | None) -> None:
    assert policy.pools_for(pools) == expected


def test_tenant_identity_is_the_same_in_the_pre_call_hook_and_the_success_event() -> None:
    team_auth = UserAPIKeyAuth(api_key="sk-team-key-00001", team_id="acme")
    assert tenant_of(team_auth) == tenant_of_event_metadata({"user_api_key_team_id": "acme",
                                                             "user_api_key_hash": "x"})
    key_auth = UserAPIKeyAuth(api_key="sk-solo-key-00001")
    assert key_auth.token  # LiteLLM hashes the key into `token`; events carry that hash
    assert tenant_of(key_auth) == tenant_of_event_metadata({"user_api_key_hash": key_auth.token})
    assert tenant_of(key_auth) != tenant_of(team_auth)
    assert "sk-solo" not in tenant_of(key_auth)


def test_the_policy_key_can_be_renamed() -> None:
    tenancy = TenancyConfig(metadata_key="routing")
    auth = UserAPIKeyAuth(api_key="sk-r-000000000001",
                          metadata={"routing": {"allow_force_pool": True},
                                    "dualpool_policy": {"allow_force_pool": "ignored"}})
    assert resolve(auth, tenancy).allow_force_pool is True


def test_the_budget_header_is_the_admins_unless_a_policy_grants_it() -> None:
    # x-dualpool-budget-tokens shows the live shared estimate: off for tenants and
    # for callers without key, on for the proxy admin
    assert resolve(UserAPIKeyAuth(api_key="sk-plain-key-0002")).expose_budget_header is False
    assert resolve(UserAPIKeyAuth()).expose_budget_header is False
    admin = UserAPIKeyAuth(api_key="sk-master-key-0002", user_role="proxy_admin")
    assert resolve(admin).expose_budget_header is True
    granted = UserAPIKeyAuth(api_key="sk-ops-key-000002", team_id="ops",
                             team_metadata={"dualpool_policy": {"expose_budget_header": True}})
    assert resolve(granted).expose_budget_header is True
    revoked = UserAPIKeyAuth(api_key="sk-ops-key-000003", team_id="ops",
                             team_metadata={"dualpool_policy": {"expose_budget_header": True}},
                             metadata={"dualpool_policy": {"expose_budget_header": False}})
    assert resolve(revoked).expose_budget_header is False


def test_the_default_policy_can_open_or_close_the_budget_header_for_everyone() -> None:
    opened = TenancyConfig.model_validate({"default_policy": {"expose_budget_header": True}})
    assert resolve(UserAPIKeyAuth(api_key="sk-plain-key-0003"), opened).expose_budget_header
    closed = TenancyConfig.model_validate({"default_policy": {"expose_budget_header": False}})
    admin = UserAPIKeyAuth(api_key="sk-master-key-0003", user_role="proxy_admin")
    assert resolve(admin, closed).expose_budget_header is False
