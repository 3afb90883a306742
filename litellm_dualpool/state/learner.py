"""The learning state every store shares: the calibrator behind the influence guard.

`Learner.apply` is the one way an observation reaches the calibrator (guard first, then the
calibrator's own bounds and outlier rules); `snapshot`/`restore` persist both together, so a
restored worker also remembers how much each tenant has recently contributed.

Corroborated deviations. The calibrator's own outlier rule is relative to the key's spread
(`outlier_factor` x sigma), which honest but varied traffic makes wide, and a flood of consistent
outliers reads to it as a regime change; either way one tenant could drag a shared key. So for
*normal* tenants the learner adds a fixed rule on a warm key: an observation more than
`max_deviation_fraction` away from the current prediction is withheld unless corroborated, that
is unless since the last ordinary observation at least `corroboration_count` deviations in the
same direction came from two or more tenants (a real change of tokenizer moves everyone's counts
the same way; honest observations rejected because an attacker already moved the key point the
other way never corroborate it). *trusted* tenants skip this rule.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.calibration_snapshot import MAX_COUNT
from litellm_dualpool.core.tenant import ObservationTrust
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.state.guard import Admission, InfluenceGuard
from litellm_dualpool.state.observation import Observation

SNAPSHOT_KIND = "litellm_dualpool.state"
SNAPSHOT_VERSION = 1


class Outcome(StrEnum):
    """What became of one observation (a bounded metric label)."""

    LEARNED = "learned"          # the calibrator accepted it
    REJECTED = "rejected"        # the calibrator refused it (ratio bounds, outlier, media)
    LIMITED = "limited"          # its tenant is over its share of the key
    UNTRUSTED = "untrusted"      # its tenant's observations are never learned from


#: Tenants remembered per direction (two distinct ones corroborate).
_CORROBORATING_TENANTS = 2


class _Deviations:
    """Large deviations of one key since its last ordinary observation, by direction."""

    __slots__ = ("down", "down_count", "up", "up_count")

    def __init__(self, up: list[str] | None = None, up_count: int = 0,
                 down: list[str] | None = None, down_count: int = 0) -> None:
        self.up, self.up_count = up or [], up_count
        self.down, self.down_count = down or [], down_count

    def add(self, tenant: str, above: bool) -> tuple[int, list[str]]:
        """Count one deviation; (deviations this way, distinct tenants behind them)."""
        side = self.up if above else self.down
        if tenant not in side and len(side) < _CORROBORATING_TENANTS:
            side.append(tenant)
        if above:
            self.up_count += 1
            return self.up_count, side
        self.down_count += 1
        return self.down_count, side

    def to_list(self) -> list[Any]:
        return [list(self.up), self.up_count, list(self.down), self.down_count]


class Learner:
    """Guard + calibrator; thread safe."""

    def __init__(self, calibrator: Calibrator, guard: InfluenceGuard | None = None) -> None:
        self.calibrator = calibrator
        self.guard = guard or InfluenceGuard()
        self._lock = threading.Lock()
        self._deviations: dict[CategoryKey, _Deviations] = {}

    def apply(self, obs: Observation, time_ms: int | None = None) -> Outcome:
        """Learn from one observation; `time_ms` (default: the observation's) drives the guard."""
        if not obs.learnable:
            return Outcome.REJECTED
        with self._lock:
            admission = self.guard.admit(obs.key, obs.tenant, obs.trust,
                                         obs.time_ms if time_ms is None else time_ms)
            if admission is Admission.UNTRUSTED:
                return Outcome.UNTRUSTED
            if admission is Admission.SHARE_CAP:
                return Outcome.LIMITED
            if obs.trust is ObservationTrust.NORMAL and not self._corroborated(obs):
                return Outcome.LIMITED
            learned = self.calibrator.observe(obs.key, obs.shape, obs.prompt_tokens)
        return Outcome.LEARNED if learned else Outcome.REJECTED

    def _corroborated(self, obs: Observation) -> bool:
        """False when `obs` deviates too far from a warm key's prediction on its own."""
        calibrator, limits = self.calibrator, self.guard.limits
        if calibrator.ratio(obs.key).samples < calibrator.settings.outlier_warmup:
            return True
        predicted = max(calibrator.estimate_point_tokens(obs.key, obs.shape), 1)
        deviation = (obs.prompt_tokens - predicted) / predicted
        if abs(deviation) <= limits.max_deviation_fraction:
            self._deviations.pop(obs.key, None)
            return True
        record = self._deviations.setdefault(obs.key, _Deviations())
        count, tenants = record.add(obs.tenant, deviation > 0)
        return count >= limits.corroboration_count and len(tenants) >= _CORROBORATING_TENANTS

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            deviations = [[k.model_group, k.category, *d.to_list()]
                          for k, d in self._deviations.items()]
            return {"kind": SNAPSHOT_KIND, "version": SNAPSHOT_VERSION,
                    "calibration": self.calibrator.snapshot(), "guard": self.guard.snapshot(),
                    "deviations": deviations}

    def restore(self, snapshot: Mapping[str, Any], *, max_time_ms: int | None = None) -> int:
        """Replace calibrator and guard state; ConfigError (nothing changed) if malformed.

        Returns how many calibration keys were out of bounds and clamped (`Calibrator.restore`);
        guard windows beyond `max_time_ms` are dropped (`InfluenceGuard.restore`)."""
        if not isinstance(snapshot, Mapping) or snapshot.get("kind") != SNAPSHOT_KIND or (
                snapshot.get("version") != SNAPSHOT_VERSION):
            raise ConfigError(f"not a {SNAPSHOT_KIND} snapshot of version {SNAPSHOT_VERSION}",
                              path="snapshot")
        probe = InfluenceGuard(self.guard.limits)
        probe.restore(snapshot.get("guard", []), max_time_ms=max_time_ms)
        check = Calibrator(self.calibrator.settings)
        check.restore(snapshot.get("calibration", {}))  # validate before touching live state
        deviations = _parse_deviations(snapshot.get("deviations") or [])
        with self._lock:
            clamped = self.calibrator.restore(snapshot["calibration"])
            self.guard = probe
            self._deviations = deviations
        return clamped


def _parse_deviations(items: object) -> dict[CategoryKey, _Deviations]:
    """The snapshot's deviation records; ConfigError naming the path if malformed."""
    if not isinstance(items, list):
        raise ConfigError("must be a list", path="snapshot.deviations")
    deviations = {}
    for i, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 6
                and all(isinstance(v, str) for v in item[:2])
                and all(isinstance(side, list) and all(isinstance(t, str) for t in side)
                        for side in (item[2], item[4]))
                and all(type(c) is int and 0 <= c <= MAX_COUNT for c in (item[3], item[5]))):
            raise ConfigError("must be [model_group, category, up, up_count, down, "
                              "down_count]", path=f"snapshot.deviations[{i}]")
        deviations[CategoryKey(item[0], item[1])] = _Deviations(
            item[2][:_CORROBORATING_TENANTS], item[3], item[4][:_CORROBORATING_TENANTS],
            item[5])
    return deviations
