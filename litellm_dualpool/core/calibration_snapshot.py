"""The calibrator's snapshot format: a small, versioned JSON object, written and parsed here.

A snapshot comes back from storage that anything may have written (a shared Redis, a file), so
parsing is strict about shape and types (a ConfigError names the path of the first problem) and
refuses every number that would fail in arithmetic later: non-finite values, integers too large
for a float, counts beyond `MAX_COUNT`, statistics beyond `MAX_STATISTIC`. Whether the values
make sense for one calibrator's settings (ratio bounds, spread) is that calibrator's check
(`Calibrator.restore` clamps them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from litellm_dualpool.errors import ConfigError

SNAPSHOT_VERSION = 3
#: Versions `parse_snapshot` reads: 2 had the decayed statistics and no "scale" (read as 1).
READABLE_VERSIONS = (2, 3)
SNAPSHOT_KIND = "litellm_dualpool.calibration"
#: Largest count (samples, streaks) accepted: the largest integer a float holds exactly.
MAX_COUNT = 2**53
#: Largest magnitude of a decayed statistic (`scale * a`, `scale * b`). An honest entry is a sum
#: over the ~1/(1-beta) latest observations of features squared over tokens squared: below 1e3
#: even for thousands of messages per request. Far beyond it is garbage that would hold the fit
#: for a very long time (it decays by beta per observation).
MAX_STATISTIC = 1e12


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key's persisted state (`_KeyState` in calibration.py says what each value means).

    a_upper: the upper triangle of the scaled statistics matrix, row by row.
    """

    model_group: str
    category: str
    samples: int
    a_upper: tuple[float, ...]
    b: tuple[float, ...]
    scale: float
    theta: tuple[float, ...]
    densities: tuple[float, ...]
    dev_sum: float
    dev_weight: float
    rejected_streak: int = 0
    eager_refits: int = 0


def snapshot_object(records: Sequence[KeyRecord], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable snapshot of `records` (`settings` are informational)."""
    keys = [{"model_group": r.model_group, "category": r.category, "samples": r.samples,
             "a_upper": list(r.a_upper), "b": list(r.b), "scale": r.scale,
             "theta": list(r.theta), "densities": list(r.densities), "dev_sum": r.dev_sum,
             "dev_weight": r.dev_weight, "rejected_streak": r.rejected_streak,
             "eager_refits": r.eager_refits} for r in records]
    return {"kind": SNAPSHOT_KIND, "version": SNAPSHOT_VERSION, "settings": dict(settings),
            "keys": keys}


def parse_snapshot(snapshot: object, *, features: int, densities: int) -> list[KeyRecord]:
    """The key records of a snapshot whose vectors have `features` coefficients and `densities`
    character densities; ConfigError naming the path of the first problem."""
    if not isinstance(snapshot, Mapping):
        raise ConfigError("a calibration snapshot must be an object", path="snapshot")
    if snapshot.get("kind") != SNAPSHOT_KIND or snapshot.get("version") not in READABLE_VERSIONS:
        raise ConfigError(
            f"unsupported snapshot kind/version {_short(snapshot.get('kind'))}/"
            f"{_short(snapshot.get('version'))} (expected {SNAPSHOT_KIND}/{SNAPSHOT_VERSION})",
            path="snapshot.version")
    entries = snapshot.get("keys")
    if not isinstance(entries, list):
        raise ConfigError("must be a list", path="snapshot.keys")
    records, seen = [], set()
    for i, entry in enumerate(entries):
        record = _parse_key(entry, f"snapshot.keys[{i}]", features, densities)
        key = (record.model_group, record.category)
        if key in seen:
            raise ConfigError(f"duplicate key {key}", path=f"snapshot.keys[{i}]")
        seen.add(key)
        records.append(record)
    return records


def _short(value: object) -> str:
    """A bounded repr for messages (a value from storage may be huge)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: object, path: str, limit: float = math.inf) -> float:
    """A finite number of magnitude <= `limit` (bool, strings and huge integers refused)."""
    if type(value) not in (int, float):
        raise ConfigError(f"must be a finite number, got {_short(value)}", path=path)
    try:
        number = float(value)  # type: ignore[arg-type]  # checked just above to be a real number
    except OverflowError:
        raise ConfigError("must be a finite number, got an integer too large for a float",
                          path=path) from None
    if not math.isfinite(number) or abs(number) > limit:
        raise ConfigError(f"must be a finite number of magnitude <= {limit:g}, got "
                          f"{_short(value)}", path=path)
    return number


def _vector(value: object, length: int, path: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != length:
        raise ConfigError(f"must be a list of {length} numbers", path=path)
    return tuple(_number(v, f"{path}[{j}]") for j, v in enumerate(value))


def _count(value: object, path: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ConfigError(f"must be an integer in [0, 2**53], got {_short(value)}", path=path)
    return value


def _lenient_count(value: object) -> int:
    """Streak counters: informational, so a bad value reads as 0 rather than refusing."""
    return value if type(value) is int and 0 <= value <= MAX_COUNT else 0


def _parse_key(entry: object, path: str, features: int, densities: int) -> KeyRecord:
    if not isinstance(entry, Mapping):
        raise ConfigError("must be an object", path=path)
    group, category = entry.get("model_group"), entry.get("category")
    if not isinstance(group, str) or not isinstance(category, str):
        raise ConfigError("model_group and category must be strings", path=path)
    size = features * (features + 1) // 2
    upper = entry.get("a_upper")
    if not isinstance(upper, list) or len(upper) != size:
        raise ConfigError(f"must be a list of {size} numbers (the upper triangle of the "
                          f"{features}x{features} statistics matrix, row by row)",
                          path=f"{path}.a_upper")
    scale = _number(entry.get("scale", 1.0), f"{path}.scale")
    if not 0.0 < scale <= 1.0:  # the statistics only ever decay from scale 1
        raise ConfigError(f"must be in (0, 1], got {scale!r}", path=f"{path}.scale")
    limit = MAX_STATISTIC / scale
    a_upper = tuple(_number(v, f"{path}.a_upper[{k}]", limit) for k, v in enumerate(upper))
    b = _vector(entry.get("b"), features, f"{path}.b")
    for j, v in enumerate(b):
        _number(v, f"{path}.b[{j}]", limit)
    dev_sum = _number(entry.get("dev_sum"), f"{path}.dev_sum")
    dev_weight = _number(entry.get("dev_weight"), f"{path}.dev_weight")
    if dev_weight <= 0 or dev_sum < 0:
        raise ConfigError("dev_weight must be > 0 and dev_sum >= 0", path=f"{path}.dev_weight")
    return KeyRecord(
        model_group=group, category=category,
        samples=_count(entry.get("samples"), f"{path}.samples"),
        a_upper=a_upper, b=b, scale=scale,
        theta=_vector(entry.get("theta"), features, f"{path}.theta"),
        densities=_vector(entry.get("densities"), densities, f"{path}.densities"),
        dev_sum=dev_sum, dev_weight=dev_weight,
        rejected_streak=_lenient_count(entry.get("rejected_streak", 0)),
        eager_refits=_lenient_count(entry.get("eager_refits", 0)))
