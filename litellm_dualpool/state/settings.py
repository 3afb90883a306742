"""``dualpool_settings.state``: which backend keeps the learned state, and the Redis knobs.

The Redis connection defaults to the one LiteLLM itself uses for cross-instance router state
(``router_settings.redis_host`` / ``redis_port`` / ``redis_password``, else the ``REDIS_HOST`` /
``REDIS_PORT`` / ``REDIS_PASSWORD`` environment variables); ``os.environ/NAME`` values are
resolved the way LiteLLM resolves them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from litellm_dualpool.errors import ConfigError
from litellm_dualpool.state.guard import InfluenceLimits

_PREFIX_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:{}-]{0,127}$"
ENV_PREFIX = "os.environ/"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisConnection(_Model):
    """Where Redis is. Unset: router_settings' redis_*, then REDIS_* variables, then loopback."""

    url: str | None = Field(None, description="redis:// or rediss:// URL (wins over host/port).")
    host: str | None = Field(None, min_length=1, description="Redis host.")
    port: int | None = Field(None, ge=1, le=65535, description="Redis port.")
    password: str | None = Field(None, description="Redis password (or os.environ/NAME).")
    username: str | None = Field(None, description="Redis ACL user name.")
    db: int = Field(0, ge=0, le=1024, description="Database number.")

    @model_validator(mode="after")
    def _secrets_from_environment(self) -> RedisConnection:
        """A password is never written in the YAML: only ``os.environ/NAME`` names one."""
        if self.password is not None and not self.password.startswith(ENV_PREFIX):
            raise ValueError("password: give os.environ/NAME (secrets come from the environment)")
        if (self.url is not None and not self.url.startswith(ENV_PREFIX)
                and urlsplit(self.url).password):
            raise ValueError("url: a URL with a password must be os.environ/NAME (secrets come "
                             "from the environment)")
        return self


class InfluenceConfig(_Model):
    """Per-tenant influence limits on shared calibration keys (see state/guard.py)."""

    max_tenant_share: float = Field(
        0.34, gt=0, le=1,
        description="A normal tenant's most share of a key's admitted observations in the window.")
    min_tenant_quota: int = Field(
        8, ge=0, le=1_000_000,
        description="Observations a tenant may always contribute per key and window.")
    window_seconds: float = Field(60.0, gt=0, le=86_400, description="Sliding window length.")
    buckets: int = Field(6, ge=1, le=600, description="Steps of the sliding window.")
    max_tenants_per_key: int = Field(
        1024, ge=1, le=1_000_000,
        description="Distinct tenants tracked per key and window; more share one slot.")
    max_deviation_fraction: float = Field(
        0.25, gt=0, le=10,
        description="A normal tenant's observation further than this (relative) from a warm "
                    "key's prediction is learned only when another tenant corroborates it.")
    corroboration_count: int = Field(
        3, ge=1, le=1000,
        description="Same-direction deviations (from two or more tenants) that corroborate.")

    def to_limits(self) -> InfluenceLimits:
        return InfluenceLimits(**self.model_dump())


class StateConfig(_Model):
    """Where learned calibration state lives and how workers share it."""

    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: per process; redis: shared by workers and replicas.")
    redis: RedisConnection = Field(default_factory=RedisConnection)
    key_prefix: str = Field(
        "litellm_dualpool", pattern=_PREFIX_PATTERN,
        description="Prefix of the Redis keys (one namespace per fleet sharing a ratio).")
    stream_max_len: int = Field(
        20_000, ge=100, le=10_000_000,
        description="Observations kept in the shared stream (approximate trim).")
    sync_interval_seconds: float = Field(
        0.5, gt=0, le=60, description="Period of publishing and reading observations.")
    snapshot_interval_seconds: float = Field(
        30.0, gt=0, le=86_400, description="Period of writing the learned state to Redis.")
    operation_timeout_seconds: float = Field(
        1.0, gt=0, le=60, description="Timeout of one Redis operation.")
    restore_timeout_seconds: float = Field(
        3.0, gt=0, le=120, description="Time the proxy's start may spend restoring state.")
    max_pending_observations: int = Field(
        10_000, ge=1, le=10_000_000,
        description="Observations queued while Redis is unreachable; older ones are dropped.")
    batch_size: int = Field(500, ge=1, le=100_000, description="Entries per Redis round trip.")
    retry_max_seconds: float = Field(
        5.0, gt=0, le=600, description="Longest wait between reconnection attempts.")
    influence: InfluenceConfig = Field(default_factory=InfluenceConfig)

    @model_validator(mode="after")
    def _timeouts(self) -> StateConfig:
        if self.operation_timeout_seconds > self.restore_timeout_seconds:
            raise ValueError("operation_timeout_seconds must not exceed restore_timeout_seconds")
        return self


@dataclass(frozen=True, slots=True)
class RedisStateSettings:
    """What the Redis store runs with (connection resolved)."""

    url: str | None = None
    host: str = "127.0.0.1"
    port: int = 6379
    password: str | None = None
    username: str | None = None
    db: int = 0
    key_prefix: str = "litellm_dualpool"
    stream_max_len: int = 20_000
    sync_interval_seconds: float = 0.5
    snapshot_interval_seconds: float = 30.0
    operation_timeout_seconds: float = 1.0
    restore_timeout_seconds: float = 3.0
    max_pending_observations: int = 10_000
    batch_size: int = 500
    retry_max_seconds: float = 5.0


def resolve_env(value: object, path: str) -> object:
    """``os.environ/NAME`` -> the variable's value (ConfigError naming `path` when unset)."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        if name not in os.environ:
            raise ConfigError(f"environment variable {name} is not set", path=path)
        return os.environ[name]
    return value


def redis_settings(state: StateConfig, router_settings: Mapping[str, Any] | None = None,
                   environ: Mapping[str, str] | None = None) -> RedisStateSettings:
    """The store's settings: explicit ``state.redis`` fields first, then LiteLLM's
    ``router_settings.redis_*``, then ``REDIS_*`` variables, then 127.0.0.1:6379."""
    env = os.environ if environ is None else environ
    router = router_settings or {}
    conn = state.redis
    base = "dualpool_settings.state.redis"

    def pick(name: str, env_name: str) -> object:
        explicit = getattr(conn, name)
        if explicit is not None:
            return resolve_env(explicit, f"{base}.{name}")
        inherited = router.get(f"redis_{name}")
        if inherited is not None:
            return resolve_env(inherited, f"router_settings.redis_{name}")
        return env.get(env_name)

    url, host, port, password = (pick("url", "REDIS_URL"), pick("host", "REDIS_HOST"),
                                 pick("port", "REDIS_PORT"), pick("password", "REDIS_PASSWORD"))
    try:
        port_number = int(port) if port is not None else 6379  # type: ignore[call-overload]  # LiteLLM's setting: str or int
    except (TypeError, ValueError):
        raise ConfigError(f"redis port must be an integer, got {port!r}",
                          path=f"{base}.port") from None
    username = resolve_env(conn.username, f"{base}.username")
    return RedisStateSettings(
        url=str(url) if url else None, host=str(host) if host else "127.0.0.1", port=port_number,
        password=str(password) if password else None,
        username=str(username) if username else None, db=conn.db,
        key_prefix=state.key_prefix, stream_max_len=state.stream_max_len,
        sync_interval_seconds=state.sync_interval_seconds,
        snapshot_interval_seconds=state.snapshot_interval_seconds,
        operation_timeout_seconds=state.operation_timeout_seconds,
        restore_timeout_seconds=state.restore_timeout_seconds,
        max_pending_observations=state.max_pending_observations,
        batch_size=state.batch_size, retry_max_seconds=state.retry_max_seconds)
