"""Per-tenant influence limits on the shared calibration: which observations may be learned.

Why. Calibration keys (model group x category) are shared by every tenant, so one tenant sending
crafted text (long runs of rare Unicode, repeated single-token strings) could drag a shared ratio
and change where everyone else's requests go. The calibrator already bounds a single observation
(ratio bounds, a clip to within `max_step_fraction` of the prediction, outlier rejection after
warm-up); but a flood of consistent outliers reads to it as a regime change and is let through.
This guard bounds how many observations one tenant contributes to a key.

The rule, per key over a sliding window (``window_seconds`` in ``buckets`` steps): a tenant of
trust *normal* is admitted while it has fewer than ``min_tenant_quota`` admitted observations in
the window, or while its count stays below its allowed share of the key's admitted observations,
``max(max_tenant_share, 1 / tenants in the window)`` when two or more tenants contribute (a fair
share is always allowed, so two honest tenants never throttle each other). *trusted* tenants are always admitted (and dilute
everyone else's share); *none* never. So with honest traffic present a flooding tenant holds at
most its share, and alone it gets ``min_tenant_quota`` observations per window. The other half of
the defence, that one tenant's large deviations alone never move a warm key, needs the
calibrator's prediction and lives in learner.py (its knobs are here).

Deterministic: time comes from the observation (a Redis stream id on shared state), so every
worker replaying the same stream admits the same observations.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard

from litellm_dualpool.core.calibration import CategoryKey
from litellm_dualpool.core.calibration_snapshot import MAX_COUNT
from litellm_dualpool.core.tenant import ObservationTrust
from litellm_dualpool.errors import ConfigError

#: Tenant bucket used once a key's window holds max_tenants_per_key distinct tenants.
CROWD_TENANT = "_crowd"
#: Keys tracked at most; beyond it stale windows are dropped, then new keys share one window.
MAX_WINDOWS = 4096
OVERFLOW_WINDOW = CategoryKey("", "_overflow")


class Admission(StrEnum):
    """The guard's verdict (a bounded metric label)."""

    ADMITTED = "admitted"
    SHARE_CAP = "share_cap"
    UNTRUSTED = "untrusted"


@dataclass(frozen=True, slots=True)
class InfluenceLimits:
    """Knobs of the guard (see the module docstring). Build it with
    ``state.settings.InfluenceConfig(...).to_limits()``: the bounds are defined there, once."""

    max_tenant_share: float = 0.34
    min_tenant_quota: int = 8
    window_seconds: float = 60.0
    buckets: int = 6
    max_tenants_per_key: int = 1024
    max_deviation_fraction: float = 0.25
    corroboration_count: int = 3

    @property
    def bucket_ms(self) -> int:
        return max(1, round(self.window_seconds * 1000 / self.buckets))


class _Window:
    """Admitted observations of one key per tenant, in time buckets (oldest first), with running
    per-tenant totals so that a verdict costs O(1)."""

    __slots__ = ("buckets", "latest", "per_tenant", "total")

    def __init__(self) -> None:
        self.buckets: deque[tuple[int, dict[str, int]]] = deque()
        self.latest = -1
        self.per_tenant: dict[str, int] = {}
        self.total = 0

    def advance(self, index: int, span: int) -> int:
        index = max(index, self.latest)
        self.latest = index
        while self.buckets and self.buckets[0][0] <= index - span:
            for tenant, count in self.buckets.popleft()[1].items():
                left = self.per_tenant[tenant] - count
                if left:
                    self.per_tenant[tenant] = left
                else:
                    del self.per_tenant[tenant]
                self.total -= count
        return index

    def add(self, index: int, tenant: str, count: int = 1) -> None:
        if not self.buckets or self.buckets[-1][0] != index:
            self.buckets.append((index, {}))
        bucket = self.buckets[-1][1]
        bucket[tenant] = bucket.get(tenant, 0) + count
        self.per_tenant[tenant] = self.per_tenant.get(tenant, 0) + count
        self.total += count


class InfluenceGuard:
    """Decides, per observation, whether its tenant may still move a key (not thread safe:
    one owner, the state store, calls it)."""

    def __init__(self, limits: InfluenceLimits | None = None) -> None:
        self.limits = limits or InfluenceLimits()
        self._windows: dict[CategoryKey, _Window] = {}

    def admit(self, key: CategoryKey, tenant: str, trust: ObservationTrust,
              time_ms: int) -> Admission:
        """The verdict for one observation; an admitted one is counted in the window."""
        if trust is ObservationTrust.NONE:
            return Admission.UNTRUSTED
        limits = self.limits
        index = time_ms // limits.bucket_ms
        window = self._windows.get(key) or self._new_window(key, index)
        index = window.advance(index, limits.buckets)
        if tenant not in window.per_tenant and len(window.per_tenant) >= limits.max_tenants_per_key:
            tenant = CROWD_TENANT
        mine, total = window.per_tenant.get(tenant, 0), window.total
        tenants = len(window.per_tenant) + (0 if mine else 1)
        share = limits.max_tenant_share if tenants < 2 else max(limits.max_tenant_share,
                                                                 1.0 / tenants)
        if trust is not ObservationTrust.TRUSTED and mine >= limits.min_tenant_quota and (
                mine >= share * (total + 1)):
            return Admission.SHARE_CAP
        window.add(index, tenant)
        return Admission.ADMITTED

    def _new_window(self, key: CategoryKey, index: int) -> _Window:
        if len(self._windows) >= MAX_WINDOWS:
            span = self.limits.buckets
            self._windows = {k: w for k, w in self._windows.items() if w.latest > index - span}
            if len(self._windows) >= MAX_WINDOWS:
                key = OVERFLOW_WINDOW
        return self._windows.setdefault(key, _Window())

    # -- persistence (part of the shared snapshot) ------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        return [{"model_group": key.model_group, "category": key.category,
                 "latest": window.latest,
                 "buckets": [[index, dict(bucket)] for index, bucket in window.buckets]}
                for key, window in self._windows.items() if window.buckets]

    def restore(self, entries: object, *, max_time_ms: int | None = None) -> None:
        """Replace the windows with a snapshot's; ConfigError naming the path if malformed.

        A window whose buckets lie beyond `max_time_ms` is dropped (it starts empty): time only
        moves forward here, so a window from the future would never expire and would hold its
        tenants' counts for good."""
        if not isinstance(entries, list):
            raise ConfigError("must be a list", path="guard")
        horizon = None if max_time_ms is None else max_time_ms // self.limits.bucket_ms
        windows: dict[CategoryKey, _Window] = {}
        for i, entry in enumerate(entries):
            path = f"guard[{i}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("model_group"), str) \
                    or not isinstance(entry.get("category"), str):
                raise ConfigError("needs model_group and category strings", path=path)
            window = _Window()
            latest = entry.get("latest")
            window.latest = latest if _is_count(latest) else -1
            buckets = entry.get("buckets") or []
            if not isinstance(buckets, list):
                raise ConfigError("must be a list", path=f"{path}.buckets")
            for j, item in enumerate(buckets):
                if not (isinstance(item, list) and len(item) == 2 and _is_count(item[0])
                        and isinstance(item[1], Mapping)
                        and all(isinstance(t, str) and _is_count(c) for t, c in item[1].items())):
                    raise ConfigError("must be [index, {tenant: count}] with counts in "
                                      "[0, 2**53]", path=f"{path}.buckets[{j}]")
                for tenant, count in item[1].items():
                    if count:
                        window.add(item[0], tenant, count)
            if window.buckets:
                window.latest = max(window.latest, window.buckets[-1][0])
            if horizon is not None and window.latest > horizon:
                continue
            windows[CategoryKey(entry["model_group"], entry["category"])] = window
        self._windows = windows


def _is_count(value: object) -> TypeGuard[int]:
    """A non-negative integer a float holds exactly (the guard multiplies counts by shares)."""
    return type(value) is int and 0 <= value <= MAX_COUNT
