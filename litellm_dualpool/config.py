"""Plugin configuration: one pydantic root model for the settings, plus the pools read from the
LiteLLM YAML's own ``model_list``.

Settings live beside LiteLLM's sections under a top-level ``dualpool_settings:`` key (the proxy
ignores top-level keys it does not know, on 1.106 and 1.110). Pools are declared on the
deployments users already list: ``model_info.max_model_len`` (the backend's vLLM
``--max-model-len``), or, where it is absent, the limit the backend reports on ``/v1/models``
(limits.py; ``dualpool_settings.discovery``); deployments of one model group with the same
limit form one pool, the smallest is the short pool. A group is ours when one of its
deployments carries ``model_info.max_model_len`` or ``model_info.pool``; others are left alone.
Every error is a :class:`~litellm_dualpool.errors.ConfigError` naming the offending path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from litellm_dualpool.core.affinity import AffinitySettings
from litellm_dualpool.core.calibration import CalibrationSettings
from litellm_dualpool.core.learning import LearningSettings
from litellm_dualpool.core.policy import PolicySettings
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.limits import MAX_MODEL_LEN_BOUND, deployment_key
from litellm_dualpool.state.settings import StateConfig
from litellm_dualpool.tenancy import TenancyConfig

#: The top-level key of the LiteLLM YAML that holds the plugin's settings.
SETTINGS_KEY = "dualpool_settings"
#: Environment variable naming the YAML file explicitly (else the proxy's own --config is used).
CONFIG_ENV = "LITELLM_DUALPOOL_CONFIG"
#: Default names of the smallest and the largest pool when no ``model_info.pool`` label is set.
SHORT_POOL, LONG_POOL = "short", "long"
#: A label: short, printable, safe as a Prometheus label value and a header value.
_LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationConfig(_Model):
    """The online bytes-per-token learner (see core/calibration.py)."""

    cold_start_bytes_per_token: float = Field(
        4.0, gt=0, le=16, description="Ratio used before any backend has reported usage.")
    ema_beta: float = Field(
        0.998, gt=0, lt=1,
        description="Per-observation decay of the fit (window ~1/(1-beta)); 0.998 measured best "
                    "in bench/estimator_accuracy.py (regime changes are caught separately).")
    sigma_beta: float = Field(
        0.99, gt=0, lt=1,
        description="Per-observation decay of the learned spread that sets the routing margin "
                    "(shorter than the fit's window, so the margin widens quickly).")
    gamma: float = Field(
        2.0, ge=0, le=20, description="Conservative margin in units of the learned spread.")
    min_bytes_per_token: float = Field(
        1.0, gt=0, le=16, description="Observations implying a lower ratio are rejected.")
    max_bytes_per_token: float = Field(
        8.0, gt=0, le=64, description="Observations implying a higher ratio are rejected.")
    max_step_fraction: float = Field(
        0.25, gt=0, le=10, description="One observation moves the prediction at most this much.")
    max_keys: int = Field(
        256, ge=1, le=100_000, description="Calibration keys (group x category) kept at most.")
    image_tokens: int = Field(1024, ge=0, le=1_000_000, description="Tokens charged per image.")
    audio_tokens: int = Field(512, ge=0, le=1_000_000, description="Tokens charged per audio part.")
    file_tokens: int = Field(1024, ge=0, le=1_000_000, description="Tokens charged per file part.")

    @model_validator(mode="after")
    def _ordered(self) -> CalibrationConfig:
        if self.min_bytes_per_token >= self.max_bytes_per_token:
            raise ValueError("min_bytes_per_token must be below max_bytes_per_token")
        if not self.min_bytes_per_token <= self.cold_start_bytes_per_token <= self.max_bytes_per_token:
            raise ValueError("cold_start_bytes_per_token must lie within "
                             "[min_bytes_per_token, max_bytes_per_token]")
        return self

    def to_core(self) -> CalibrationSettings:
        return CalibrationSettings(**self.model_dump())


class VllmMetricsConfig(_Model):
    """Optional background polling of each deployment's vLLM ``/metrics`` for its load."""

    enabled: bool = Field(False, description="Poll num_requests_running/waiting of every pool.")
    interval_seconds: float = Field(2.0, ge=0.1, le=300, description="Polling period.")
    timeout_seconds: float = Field(1.0, gt=0, le=60, description="Timeout of one scrape.")
    stale_after_seconds: float = Field(
        10.0, gt=0, le=3600, description="A reading older than this is ignored.")


class SpilloverConfig(_Model):
    """Load-aware spillover from a saturated pool to the next larger one."""

    enabled: bool = Field(True, description="Send to a larger pool when the preferred one is full.")
    load_fraction: float = Field(
        0.9, gt=0, le=10,
        description="A pool whose in-flight/capacity reaches this is saturated.")
    default_max_in_flight_per_deployment: int = Field(
        64, ge=1, le=1_000_000,
        description="Capacity of a deployment without model_info.max_num_seqs.")
    vllm_metrics: VllmMetricsConfig = Field(default_factory=VllmMetricsConfig)


class DiscoveryConfig(_Model):
    """Pool limits read from each deployment's ``GET /v1/models`` (vLLM's ``max_model_len``)."""

    enabled: bool = Field(
        True, description="Read max_model_len from the backend where model_info has none, and "
                          "cross-check it where model_info has one.")
    timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="Timeout of one backend's answer (all are asked at once).")
    on_mismatch: Literal["warn", "error"] = Field(
        "warn", description="A configured max_model_len the backend contradicts: a start-up "
                            "warning (the configured value is used), or error: the proxy does "
                            "not start.")
    retry_seconds: float = Field(
        30.0, ge=1, le=3600,
        description="Period of the background retries for deployments whose limit could not be "
                    "read at start (they take no traffic until it is read).")


class RecoveryConfig(_Model):
    """Misroute recovery: a context-length rejection is retried once on the next larger pool."""

    enabled: bool = Field(True, description="Add a hidden recovery group per dual-pool group.")
    group_suffix: str = Field(
        "::dualpool-recovery", min_length=1, max_length=64, pattern=r"^\S+$",
        description="Name of the hidden group: the model group's name plus this suffix.")
    hide_from_model_list: bool = Field(True, description="Leave the hidden group out of /v1/models.")


class OverridesConfig(_Model):
    """Per-request overrides through request metadata, e.g. ``metadata: {dualpool: {pool: long}}``."""

    metadata_key: str = Field("dualpool", pattern=_LABEL_PATTERN,
                              description="Request metadata key holding the overrides.")
    allow_force_pool: bool = Field(
        False, description="Default policy: may a request force a pool? (keys may override)")
    allow_category: bool = Field(
        True, description="Default policy: may a request declare its calibration category?")
    categories: tuple[str, ...] | None = Field(
        None, description="Categories a request may declare (None: any, bounded by max_keys).")


class ArbitrationConfig(_Model):
    """Exact counts for AMBIGUOUS requests from the smaller pool's own tokenizer (vLLM's
    ``POST /tokenize``); see docs/estimator.md ("Tiers and arbitration": why 100 ms and 8).
    Any failure falls back to the estimate."""

    enabled: bool = Field(
        True, description="Ask a hosted_vllm deployment of the smaller pool for the exact count "
                          "of a request whose estimates straddle a pool limit.")
    timeout_ms: int = Field(
        100, ge=1, le=10_000,
        description="Longest wait for one /tokenize answer before the estimate decides.")
    max_concurrent: int = Field(
        8, ge=1, le=1024,
        description="Arbitrations in flight at once per proxy worker; beyond it the estimate "
                    "decides at once (no queueing).")
    unsupported_retry_seconds: float = Field(
        300.0, ge=1, le=86_400,
        description="A deployment that answered 404 (no /tokenize) is not asked again for "
                    "this long.")
    providers: tuple[str, ...] = Field(
        ("hosted_vllm",), min_length=1,
        description="LiteLLM providers (the model prefix) whose deployments are asked.")


class AffinityConfig(_Model):
    """Conversation affinity (core/affinity.py): a continuation turn stays in the larger pool
    its conversation went to, so turns near a limit do not flip pools and lose the prefix cache.
    Pins are kept per proxy worker (not shared through Redis)."""

    enabled: bool = Field(True, description="Hold continuation turns in their conversation's "
                                            "larger pool (upward only).")
    max_conversations: int = Field(
        10_000, ge=1, le=10_000_000,
        description="Conversations remembered at most per worker (least recently used first "
                    "out; ~150 bytes each).")
    ttl_seconds: float = Field(
        900.0, gt=0, le=7 * 86400,
        description="A conversation unseen for this long is forgotten (about how long a "
                    "backend's prefix cache outlives a pause under load).")

    def to_core(self) -> AffinitySettings:
        return AffinitySettings(**self.model_dump())


class LearningConfig(_Model):
    """Learning at bounded cost (core/learning.py): once a key's fit has settled, one ordinary
    request in `sample_every` is learned from; requests near a pool's limit, misroutes and exact
    counts always are."""

    sample_every: int = Field(
        16, ge=1, le=1_000_000,
        description="Learn one ordinary request in this many once a key has settled (1: all).")
    settled_samples: int = Field(
        512, ge=1, le=100_000_000,
        description="Observations a key's fit needs before it counts as settled (the fit's "
                    "window is ~500 at ema_beta 0.998).")
    settled_max_spread: float = Field(
        0.05, ge=0, le=1,
        description="Largest learned spread (sigma) of a settled key; a regime change widens "
                    "it and unsettles the key.")
    near_limit_fraction: float = Field(
        0.15, ge=0, le=1,
        description="A request whose budget range, widened by this fraction, holds a pool's "
                    "max_model_len is near the limit: always learned from.")

    def to_core(self) -> LearningSettings:
        return LearningSettings(**self.model_dump())


class DualPoolSettings(_Model):
    """The root of ``dualpool_settings:``."""

    default_output_tokens: int = Field(
        1024, ge=0, le=10_000_000,
        description="Output budget of a request that sets neither max_tokens nor "
                    "max_completion_tokens.")
    headroom_fraction: float = Field(
        0.0, ge=0, le=1, description="Safety margin on the estimate when picking a pool.")
    routing: Literal["filter", "strategy"] = Field(
        "filter",
        description="filter: the gateway's routing_strategy picks inside the chosen pool; "
                    "strategy: the plugin also picks the least-in-flight deployment.")
    response_headers: bool = Field(
        True, description="Add x-dualpool-pool to responses, and x-dualpool-budget-tokens where "
                          "the caller's policy sets expose_budget_header (the admin's by default).")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    spillover: SpilloverConfig = Field(default_factory=SpilloverConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    overrides: OverridesConfig = Field(default_factory=OverridesConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    tenancy: TenancyConfig = Field(default_factory=TenancyConfig)
    arbitration: ArbitrationConfig = Field(default_factory=ArbitrationConfig)
    affinity: AffinityConfig = Field(default_factory=AffinityConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)

    def policy_settings(self) -> PolicySettings:
        spill = self.spillover.load_fraction if self.spillover.enabled else None
        return PolicySettings(headroom_fraction=self.headroom_fraction,
                              spillover_load_fraction=spill)


class _PoolInfo(_Model):
    """The plugin's keys inside one deployment's ``model_info`` (other keys are LiteLLM's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    max_model_len: int = Field(gt=0, le=MAX_MODEL_LEN_BOUND)
    pool: str | None = Field(None, pattern=_LABEL_PATTERN)
    hardware: str | None = Field(None, max_length=128)
    max_num_seqs: int | None = Field(None, ge=1, le=1_000_000)
    #: in-flight requests at which spillover counts this deployment as full (``plan`` derives it)
    max_in_flight: int | None = Field(None, ge=1, le=1_000_000)


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One pool of a model group: the deployments sharing one max_model_len."""

    name: str
    max_model_len: int
    deployment_count: int
    max_in_flight: int
    hardware: str | None = None


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A model group split into pools, sorted by max_model_len (the first is the short pool)."""

    model_group: str
    pools: tuple[PoolSpec, ...]
    _by_len: Mapping[int, PoolSpec] = field(default_factory=dict, repr=False, compare=False)
    _by_name: Mapping[str, PoolSpec] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_len", {p.max_model_len: p for p in self.pools})
        # the first pool of a name, as a search of `pools` would find it (names are unique)
        object.__setattr__(self, "_by_name", {p.name: p for p in reversed(self.pools)})

    def pool_for_len(self, max_model_len: object) -> PoolSpec | None:
        return self._by_len.get(max_model_len) if isinstance(max_model_len, int) else None

    def pool(self, name: str) -> PoolSpec | None:
        """The pool named `name` (a dict lookup: the filter asks once per deployment)."""
        try:
            return self._by_name.get(name)
        except TypeError:  # an unhashable label from a deployment's model_info
            return None

    @property
    def largest(self) -> PoolSpec:
        return self.pools[-1]


@dataclass(frozen=True, slots=True)
class PendingDeployment:
    """A deployment of a dual-pool group whose limit is still to be read from its backend: it
    takes no traffic until then."""

    index: int                    # position in model_list
    model_group: str
    key: tuple[str, str]          # limits.deployment_key: (litellm_params.model, api_base)

    @property
    def path(self) -> str:
        return f"model_list[{self.index}]"


@dataclass(frozen=True, slots=True)
class PoolLayout:
    """The pools `parse_pools` could form, and what waits for a backend's limit."""

    groups: dict[str, GroupSpec]
    pending: tuple[PendingDeployment, ...] = ()
    #: groups without two known pools yet (their pending deployments decide)
    waiting_groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """What the plugin runs with: validated settings and the dual-pool groups."""

    settings: DualPoolSettings
    groups: Mapping[str, GroupSpec]
    source: str | None = None
    #: LiteLLM's ``router_settings`` (the Redis state backend inherits its redis_* keys).
    router_settings: Mapping[str, Any] = field(default_factory=dict)
    #: Deployments whose limit is to be read from their backend (none when all are configured).
    pending: tuple[PendingDeployment, ...] = ()
    #: Dual-pool groups that cannot be formed until some pending limits are read.
    waiting_groups: tuple[str, ...] = ()
    #: Limits read from backends, by `limits.deployment_key` (how the router's deployments
    #: without ``model_info.max_model_len`` find their pool).
    discovered_limits: Mapping[tuple[str, str], int] = field(default_factory=dict)


def _format_validation(error: ValidationError, prefix: str) -> ConfigError:
    lines, first = [], None
    for item in error.errors():
        path = ".".join([prefix, *(str(p) for p in item["loc"])]) if item["loc"] else prefix
        first = first or path
        lines.append(f"{path}: {item['msg']}")
    return ConfigError("invalid configuration:\n  " + "\n  ".join(lines), path=None) if len(
        lines) > 1 else ConfigError(lines[0].split(": ", 1)[1], path=first)


def parse_settings(raw: object) -> DualPoolSettings:
    """Validate the ``dualpool_settings`` mapping (None means all defaults)."""
    if raw is None:
        return DualPoolSettings()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"must be a mapping, got {type(raw).__name__}", path=SETTINGS_KEY)
    try:
        return DualPoolSettings.model_validate(dict(raw))
    except ValidationError as error:
        raise _format_validation(error, SETTINGS_KEY) from None


def _default_pool_name(index: int, count: int, max_model_len: int) -> str:
    if index == 0:
        return SHORT_POOL
    if index == count - 1:
        return LONG_POOL
    return f"ctx{max_model_len}"


def parse_pools(model_list: object, settings: DualPoolSettings | None = None,
                discovered: Mapping[int, int] | None = None) -> dict[str, GroupSpec]:
    """Group ``model_list`` deployments by model group, then by ``model_info.max_model_len``."""
    return layout_pools(model_list, settings, discovered).groups


def _declares(info: Mapping[str, Any]) -> bool:
    """A deployment that makes its group a dual-pool group."""
    return info.get("max_model_len") is not None or info.get("pool") is not None


def layout_pools(model_list: object, settings: DualPoolSettings | None = None,
                 discovered: Mapping[int, int] | None = None) -> PoolLayout:
    """The pools of every dual-pool group. A deployment without ``model_info.max_model_len``
    takes its limit from `discovered` (model_list index -> the backend's max_model_len); one
    without either is pending (discovery on) or an error (discovery off). A group whose known
    limits do not yet form two pools waits for its pending deployments."""
    settings = settings or DualPoolSettings()
    discovered = discovered or {}
    if model_list is None:
        return PoolLayout({})
    if not isinstance(model_list, Sequence) or isinstance(model_list, str | bytes):
        raise ConfigError("must be a list of deployments", path="model_list")
    seen: dict[str, list[tuple[int, Mapping[str, Any], Mapping[str, Any]]]] = {}
    ours: set[str] = set()
    for i, entry in enumerate(model_list):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("model_name"), str):
            raise ConfigError("each deployment needs a model_name", path=f"model_list[{i}]")
        info = entry.get("model_info") or {}
        if not isinstance(info, Mapping):
            raise ConfigError("must be a mapping", path=f"model_list[{i}].model_info")
        if _declares(info):
            ours.add(entry["model_name"])
        seen.setdefault(entry["model_name"], []).append((i, info, entry))
    groups: dict[str, GroupSpec] = {}
    pending: list[PendingDeployment] = []
    waiting: list[str] = []
    for name, raw_members in seen.items():
        if name not in ours:
            continue
        members = [(i, _pool_info(i, info, discovered.get(i)), entry)
                   for i, info, entry in raw_members]
        declared = [(i, p, _capacity_params(e)) for i, p, e in members if p is not None]
        missing = [(i, e) for i, p, e in members if p is None]
        for i, entry in missing:
            key = deployment_key(entry.get("litellm_params"))
            if not settings.discovery.enabled or key is None:
                how = ("or an api_base to read it from (litellm_params.api_base)"
                       if settings.discovery.enabled else
                       "(dualpool_settings.discovery is off, so it is not read from the backend)")
                raise ConfigError(
                    f"model group {name!r} declares pools (model_info.max_model_len or pool) on "
                    f"other deployments but not on this one; every deployment of a dual-pool "
                    f"group needs it {how}", path=f"model_list[{i}].model_info.max_model_len")
            pending.append(PendingDeployment(index=i, model_group=name, key=key))
        if missing and len({p.max_model_len for _, p, _ in declared}) < 2:
            waiting.append(name)
            continue
        groups[name] = _build_group(name, declared, settings)
    return PoolLayout(groups, tuple(pending), tuple(waiting))


def _pool_info(index: int, info: Mapping[str, Any], discovered: int | None) -> _PoolInfo | None:
    """The plugin's keys of one deployment of a dual-pool group, validated; None while its
    limit is neither configured nor `discovered` (its other keys are checked all the same)."""
    known = info.get("max_model_len") if info.get("max_model_len") is not None else discovered
    try:
        checked = _PoolInfo.model_validate(dict(info, max_model_len=1 if known is None else known))
    except ValidationError as error:
        raise _format_validation(error, f"model_list[{index}].model_info") from None
    return checked if known is not None else None


def _capacity_params(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    params = entry.get("litellm_params")
    return params if isinstance(params, Mapping) else {}


def deployment_capacity(model_info: _PoolInfo | Mapping[str, Any] | None, default: int,
                        litellm_params: Mapping[str, Any] | None = None) -> int:
    """In-flight requests at which spillover counts a deployment as full: ``model_info.
    max_in_flight`` (what ``plan`` derives from the TTFT target), else the smaller of LiteLLM's
    own ``litellm_params.max_parallel_requests`` and ``model_info.max_num_seqs``, else
    ``default``. The slots alone are too late for a prefill-bound pool: its TTFT is lost long
    before 90% of 256 sequences are in flight. ``max_parallel_requests`` is the most LiteLLM
    itself sends the deployment at once (its semaphore), so more can never be running there;
    ``rpm``/``tpm`` are not used: they are rates, which LiteLLM turns into that semaphore only
    as a last resort."""
    if isinstance(model_info, _PoolInfo):
        explicit: object = model_info.max_in_flight
        seqs: object = model_info.max_num_seqs
    else:
        info = model_info or {}
        explicit, seqs = info.get("max_in_flight"), info.get("max_num_seqs")
    if type(explicit) is int and explicit > 0:
        return explicit
    parallel = (litellm_params or {}).get("max_parallel_requests")
    caps = [v for v in (parallel, seqs) if type(v) is int and v > 0]
    return min(caps) if caps else default


def _build_group(name: str, declared: list[tuple[int, _PoolInfo, Mapping[str, Any]]],
                 settings: DualPoolSettings) -> GroupSpec:
    by_len: dict[int, list[tuple[int, _PoolInfo, Mapping[str, Any]]]] = {}
    for i, info, params in declared:
        by_len.setdefault(info.max_model_len, []).append((i, info, params))
    if len(by_len) < 2:
        only = next(iter(by_len))
        raise ConfigError(
            f"model group {name!r} has a single pool (every deployment has max_model_len "
            f"{only}); a dual-pool group needs at least two different max_model_len values "
            "(a short and a long pool), or drop max_model_len to leave the group untouched",
            path=f"model_list[{declared[0][0]}].model_info.max_model_len")
    pools: list[PoolSpec] = []
    used_labels: dict[str, int] = {}
    lengths = sorted(by_len)
    default_capacity = settings.spillover.default_max_in_flight_per_deployment
    for rank, length in enumerate(lengths):
        members = by_len[length]
        labels = {info.pool for _, info, _ in members if info.pool is not None}
        if len(labels) > 1:
            raise ConfigError(f"deployments of one pool (max_model_len {length}) carry different "
                              f"pool labels {sorted(labels)}",
                              path=f"model_list[{members[0][0]}].model_info.pool")
        label = labels.pop() if labels else _default_pool_name(rank, len(lengths), length)
        if label in used_labels:
            raise ConfigError(f"pool label {label!r} names two pools of group {name!r} "
                              f"(max_model_len {used_labels[label]} and {length})",
                              path=f"model_list[{members[0][0]}].model_info.pool")
        used_labels[label] = length
        hardware = {info.hardware for _, info, _ in members if info.hardware}
        pools.append(PoolSpec(
            name=label, max_model_len=length, deployment_count=len(members),
            max_in_flight=sum(deployment_capacity(info, default_capacity, params)
                              for _, info, params in members),
            hardware=", ".join(sorted(hardware)) or None))
    return GroupSpec(model_group=name, pools=tuple(pools))


def load_plugin_config(config: Mapping[str, Any], *, source: str | None = None,
                       discovered: Mapping[int, int] | None = None) -> PluginConfig:
    """Validate a whole LiteLLM config mapping as the plugin sees it. `discovered`: limits read
    from the backends, by model_list index (deployments without one and without
    ``model_info.max_model_len`` are then `PluginConfig.pending`)."""
    if not isinstance(config, Mapping):
        raise ConfigError("the LiteLLM config must be a mapping", path=source)
    settings = parse_settings(config.get(SETTINGS_KEY))
    layout = layout_pools(config.get("model_list"), settings, discovered)
    groups = layout.groups
    recovery_names = {g + settings.recovery.group_suffix for g in groups}
    recovery_names |= {g + settings.recovery.group_suffix for g in layout.waiting_groups}
    clash = sorted(recovery_names & {str(e.get("model_name")) for e in config.get("model_list") or []
                                     if isinstance(e, Mapping)})
    if settings.recovery.enabled and clash:
        raise ConfigError(f"model group {clash[0]!r} clashes with the plugin's hidden recovery "
                          "group; change recovery.group_suffix",
                          path=f"{SETTINGS_KEY}.recovery.group_suffix")
    router = config.get("router_settings")
    model_list = config.get("model_list") or []
    limits: dict[tuple[str, str], int] = {}
    for index, length in (discovered or {}).items():
        key = deployment_key(model_list[index].get("litellm_params"))
        if key is not None:
            limits[key] = length
    return PluginConfig(settings=settings, groups=groups, source=source,
                        router_settings=dict(router) if isinstance(router, Mapping) else {},
                        pending=layout.pending, waiting_groups=layout.waiting_groups,
                        discovered_limits=limits)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a LiteLLM YAML, merging ``include:`` files the way the proxy does (lists append)."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read the LiteLLM config: {error}", path=str(file)) from None
    if not isinstance(data, dict):
        raise ConfigError("the LiteLLM config must be a mapping", path=str(file))
    for included in data.pop("include", None) or []:
        extra = read_yaml(file.parent / str(included))
        for key, value in extra.items():
            if isinstance(value, list) and isinstance(data.get(key), list):
                data[key] = data[key] + value
            else:
                data.setdefault(key, value)
    return data


def load_plugin_config_file(path: str | os.PathLike[str]) -> PluginConfig:
    return load_plugin_config(read_yaml(path), source=str(path))
