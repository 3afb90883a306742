"""Who is asking, and what they may ask of the router: per-tenant policy from key and team metadata.

A tenant is the team of the calling API key when it has one, else the key itself. Its policy is
an optional ``dualpool_policy`` entry in the team's metadata and in the key's metadata (LiteLLM
fills both into ``UserAPIKeyAuth`` whether keys come from its database or from ``custom_auth``);
the key's entry overrides the team's field by field, and both override the defaults of
``dualpool_settings.tenancy.default_policy``. An entry with a wrong field is an error naming the
field (the request is refused, never silently granted more than its admin meant).

Tenants enter the shared learning state only as a short hash of their identity (no key, alias or
team name leaves the process), together with how far their observations are trusted.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from litellm_dualpool.core.tenant import ANONYMOUS_TENANT as ANONYMOUS_TENANT
from litellm_dualpool.core.tenant import ObservationTrust as ObservationTrust
from litellm_dualpool.errors import ConfigError

#: Metadata entry (on a key or a team) holding a tenant's policy.
POLICY_METADATA_KEY = "dualpool_policy"
#: Hex digits kept of a tenant's identity hash (48 bits: collisions are irrelevant at 10^5 tenants).
TENANT_HASH_CHARS = 12
_LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"


class TenantPolicyError(ConfigError):
    """A key's or team's ``dualpool_policy`` entry is invalid; ``path`` names the field."""


class PolicySpec(BaseModel):
    """One ``dualpool_policy`` entry; an unset field inherits (key <- team <- defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_output_tokens: StrictInt | None = Field(
        None, ge=0, le=10_000_000,
        description="Output budget of this tenant's requests that set no max_tokens.")
    category: str | None = Field(
        None, pattern=_LABEL_PATTERN,
        description="Fixed calibration category of every request (requests cannot change it).")
    allow_long_pool: StrictBool | None = Field(
        None, description="May the largest pool of a group serve this tenant? false: requests "
                          "that fit only there are refused with a 400.")
    allowed_pools: tuple[str, ...] | None = Field(
        None, description="Pool labels this tenant may use (unset: every pool).")
    allow_force_pool: StrictBool | None = Field(
        None, description="May a request force a pool through its metadata?")
    allow_category: StrictBool | None = Field(
        None, description="May a request declare its calibration category?")
    observation_trust: ObservationTrust | None = Field(
        None, description="trusted, normal or none: how this tenant's usage feeds learning.")
    expose_budget_header: StrictBool | None = Field(
        None, description="Add x-dualpool-budget-tokens (the estimated budget, read from the "
                          "shared learned state) to this tenant's responses? Unset: only the "
                          "proxy admin's.")


class TenancyConfig(BaseModel):
    """``dualpool_settings.tenancy``: defaults for tenants and where their policy is read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata_key: str = Field(
        POLICY_METADATA_KEY, pattern=_LABEL_PATTERN,
        description="Key/team metadata entry holding a tenant's policy.")
    default_policy: PolicySpec = Field(
        default_factory=PolicySpec,
        description="Policy of tenants without an entry (unset fields: the plugin's defaults).")
    default_observation_trust: ObservationTrust = Field(
        ObservationTrust.NORMAL, description="Trust of a keyed tenant whose policy sets none.")
    anonymous_observation_trust: ObservationTrust = Field(
        ObservationTrust.TRUSTED,
        description="Trust of requests without key or team (no auth: the operator's own traffic).")
    admin_observation_trust: ObservationTrust = Field(
        ObservationTrust.TRUSTED,
        description="Trust of the proxy admin (the master key): a single-key gateway is the "
                    "operator's own traffic and must calibrate at full speed.")


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """What one tenant may ask, resolved from defaults, team and key.

    allowed_pools: None means every pool; default_output_tokens None means the plugin's.
    category: a fixed calibration category (None: the request's, else its content class).
    allow_long_pool: False removes each group's largest pool from the allowed pools.
    tenant: the tenant's identity hash (ANONYMOUS_TENANT without key or team).
    expose_budget_header: whether responses carry x-dualpool-budget-tokens. The header shows
        the live shared estimate, a gauge a tenant could steer a drag of the shared ratio by,
        so it is the admin's unless a policy grants it.
    """

    allow_force_pool: bool = False
    allow_category: bool = True
    allowed_pools: frozenset[str] | None = None
    default_output_tokens: int | None = None
    category: str | None = None
    allow_long_pool: bool = True
    observation_trust: ObservationTrust = ObservationTrust.TRUSTED
    tenant: str = ANONYMOUS_TENANT
    expose_budget_header: bool = False

    def pools_for(self, pool_names: list[str]) -> frozenset[str] | None:
        """The allowed subset of a group's pools (sorted smallest first); None when all are."""
        allowed = set(pool_names if self.allowed_pools is None else
                      [p for p in pool_names if p in self.allowed_pools])
        if not self.allow_long_pool and pool_names:
            allowed.discard(pool_names[-1])
        return None if allowed == set(pool_names) else frozenset(allowed)


class _EntryFreePolicies:
    """Resolved policies of tenants whose key and team carry no policy entry. They depend only
    on the tenant and the config, and the proxy resolves one per request (three pydantic dumps,
    ~10 us); a config is held (not only its id) so a recycled id never matches. Bounded."""

    MAX_CONFIGS = 16
    MAX_TENANTS = 4096

    def __init__(self) -> None:
        self._by_config: dict[int, tuple[TenancyConfig, dict[tuple[str, bool, bool, bool],
                                                               TenantPolicy]]] = {}

    def get(self, tenancy: TenancyConfig, key: tuple[str, bool, bool, bool],
            build: Callable[[], TenantPolicy]) -> TenantPolicy:
        slot = self._by_config.get(id(tenancy))
        if slot is None or slot[0] is not tenancy:
            if len(self._by_config) >= self.MAX_CONFIGS:
                self._by_config.clear()
            slot = self._by_config[id(tenancy)] = (tenancy, {})
        policies = slot[1]
        found = policies.get(key)
        if found is None:
            if len(policies) >= self.MAX_TENANTS:
                policies.clear()
            found = policies[key] = build()
        return found


_ENTRY_FREE = _EntryFreePolicies()


@functools.lru_cache(maxsize=4096)
def tenant_hash(kind: str, identity: str) -> str:
    """A short stable pseudonym of a tenant ("team"/"key" + identity); no secret leaves."""
    digest = hashlib.sha256(f"{kind}:{identity}".encode()).hexdigest()
    return f"{kind[0]}{digest[:TENANT_HASH_CHARS]}"


#: type -> whether it is a Mapping: the ABC check of LiteLLM's UserAPIKeyAuth ran five times
#: per request (~1 us each). Bounded: a handful of types ever reach `_field`.
_MAPPING_TYPES: dict[type, bool] = {}


def _field(source: Any, name: str) -> Any:
    cls = type(source)
    mapping = _MAPPING_TYPES.get(cls)
    if mapping is None:
        mapping = issubclass(cls, Mapping)
        if len(_MAPPING_TYPES) < 64:
            _MAPPING_TYPES[cls] = mapping
    if mapping:
        return source.get(name)
    return getattr(source, name, None)


def tenant_of(user_api_key_dict: Any) -> str:
    """The tenant hash of a ``UserAPIKeyAuth``: its team, else its hashed key, else its alias."""
    team = _field(user_api_key_dict, "team_id")
    if isinstance(team, str) and team:
        return tenant_hash("team", team)
    for name in ("token", "api_key", "key_alias", "user_id"):
        value = _field(user_api_key_dict, name)
        if isinstance(value, str) and value:
            return tenant_hash("key", value)
    return ANONYMOUS_TENANT


def tenant_of_event_metadata(metadata: Mapping[str, Any] | None) -> str:
    """The same tenant hash from a success event's ``litellm_params.metadata.user_api_key_*``."""
    metadata = metadata or {}
    team = metadata.get("user_api_key_team_id")
    if isinstance(team, str) and team:
        return tenant_hash("team", team)
    for name in ("user_api_key_hash", "user_api_key", "user_api_key_alias",
                 "user_api_key_user_id"):
        value = metadata.get(name)
        if isinstance(value, str) and value:
            return tenant_hash("key", value)
    return ANONYMOUS_TENANT


def parse_policy(entry: object, path: str) -> PolicySpec:
    """Validate one ``dualpool_policy`` entry; TenantPolicyError naming the field otherwise."""
    if entry is None:
        return PolicySpec()
    if not isinstance(entry, Mapping):
        raise TenantPolicyError(f"must be a mapping, got {type(entry).__name__}", path=path)
    try:
        return PolicySpec.model_validate(dict(entry))
    except ValidationError as error:
        item = error.errors()[0]
        where = ".".join([path, *(str(p) for p in item["loc"])])
        raise TenantPolicyError(item["msg"], path=where) from None


def _metadata_entry(metadata: object, key: str) -> object:
    return metadata.get(key) if isinstance(metadata, Mapping) else None


#: LiteLLM's role of the master key (``LitellmUserRoles.PROXY_ADMIN``).
PROXY_ADMIN_ROLE = "proxy_admin"


def is_proxy_admin(user_api_key_dict: Any) -> bool:
    """Whether the caller holds LiteLLM's proxy_admin role (the master key, or an admin key)."""
    role = _field(user_api_key_dict, "user_role")
    return bool(getattr(role, "value", role) == PROXY_ADMIN_ROLE)


def resolve_tenant_policy(user_api_key_dict: Any, tenancy: TenancyConfig, *,
                          allow_force_pool: bool, allow_category: bool) -> TenantPolicy:
    """Defaults (the plugin's override switches, then ``tenancy.default_policy``), then the
    team's entry, then the key's. TenantPolicyError when an entry is invalid."""
    tenant = tenant_of(user_api_key_dict)
    admin = is_proxy_admin(user_api_key_dict)
    entries = [(_metadata_entry(_field(user_api_key_dict, source), tenancy.metadata_key), label)
               for source, label in (("team_metadata", "team"), ("metadata", "key"))]
    if entries[0][0] is None and entries[1][0] is None:  # the usual case: no entry, cached
        return _ENTRY_FREE.get(tenancy, (tenant, admin, allow_force_pool, allow_category),
                               lambda: _resolve(tenant, admin, tenancy, [], allow_force_pool,
                                                allow_category))
    return _resolve(tenant, admin, tenancy, entries, allow_force_pool, allow_category)


def _resolve(tenant: str, admin: bool, tenancy: TenancyConfig,
             entries: list[tuple[object, str]], allow_force_pool: bool,
             allow_category: bool) -> TenantPolicy:
    trust = (tenancy.anonymous_observation_trust if tenant == ANONYMOUS_TENANT
             else tenancy.admin_observation_trust if admin
             else tenancy.default_observation_trust)
    values: dict[str, Any] = {"allow_force_pool": allow_force_pool,
                              "allow_category": allow_category, "observation_trust": trust,
                              "expose_budget_header": admin}
    layers = [tenancy.default_policy]
    for entry, label in entries:
        layers.append(parse_policy(entry, f"{label} metadata.{tenancy.metadata_key}"))
    for layer in layers:
        values.update(layer.model_dump(exclude_none=True))
    pools = values.pop("allowed_pools", None)
    return TenantPolicy(
        allow_force_pool=values["allow_force_pool"], allow_category=values["allow_category"],
        allowed_pools=frozenset(pools) if pools is not None else None,
        default_output_tokens=values.get("default_output_tokens"),
        category=values.get("category"), allow_long_pool=values.get("allow_long_pool", True),
        observation_trust=ObservationTrust(values["observation_trust"]), tenant=tenant,
        expose_budget_header=values["expose_budget_header"])
