"""The calibrator's snapshot from untrusted storage: numbers that would fail in arithmetic are
refused with the path named, values outside the settings' bounds are clamped and re-solved, and
an honest snapshot comes back unchanged."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from litellm_dualpool.core.calibration import CalibrationSettings, Calibrator, CategoryKey
from litellm_dualpool.core.calibration_snapshot import MAX_STATISTIC, parse_snapshot
from litellm_dualpool.core.shape import ContentClass, RequestShape
from litellm_dualpool.errors import ConfigError

KEY = CategoryKey("g", "prose")


def shape(text_bytes: int, messages: int = 1) -> RequestShape:
    return RequestShape(text_bytes, 0, messages, 0, 0, 0, None, ContentClass.PROSE)


def learned(samples: int = 40) -> Calibrator:
    rng = random.Random(11)
    cal = Calibrator()
    for _ in range(samples):
        size = rng.randint(500, 9000)
        cal.observe(KEY, shape(size), round(size / 3.6 * rng.uniform(0.97, 1.03)) + 6)
    return cal


def snapshot_of(cal: Calibrator) -> dict[str, Any]:
    return json.loads(json.dumps(cal.snapshot()))


def probes(cal: Calibrator) -> list[tuple[int, int]]:
    return [cal.estimate_both(KEY, shape(size, 2)) for size in (200, 3000, 40_000)]


def test_an_honest_snapshot_is_restored_unchanged() -> None:
    cal = learned()
    other = Calibrator()
    assert other.restore(snapshot_of(cal)) == 0
    assert other.snapshot() == cal.snapshot()


@pytest.mark.parametrize(("change", "path"), [
    (lambda k: k.update(scale=10**400), "snapshot.keys[0].scale"),
    (lambda k: k.update(scale=2.0), "snapshot.keys[0].scale"),
    (lambda k: k.update(scale=0.0), "snapshot.keys[0].scale"),
    (lambda k: k.update(samples=10**400), "snapshot.keys[0].samples"),
    (lambda k: k.update(samples=True), "snapshot.keys[0].samples"),
    (lambda k: k["theta"].__setitem__(3, 10**400), "snapshot.keys[0].theta[3]"),
    (lambda k: k["a_upper"].__setitem__(0, MAX_STATISTIC * 10), "snapshot.keys[0].a_upper[0]"),
    (lambda k: k["b"].__setitem__(0, -MAX_STATISTIC * 10), "snapshot.keys[0].b[0]"),
    (lambda k: k.update(dev_weight=float("nan")), "snapshot.keys[0].dev_weight"),
    (lambda k: k.update(model_group=["g"]), "snapshot.keys[0]"),
])
def test_numbers_that_would_fail_later_are_refused_naming_the_path(
        change: Callable[[dict[str, Any]], None], path: str) -> None:
    snap = snapshot_of(learned(5))
    change(snap["keys"][0])
    live = Calibrator()
    with pytest.raises(ConfigError) as info:
        live.restore(snap)
    assert info.value.path == path
    assert live.keys() == []  # nothing changed


def test_a_duplicate_key_is_refused() -> None:
    snap = snapshot_of(learned(5))
    snap["keys"].append(snap["keys"][0])
    with pytest.raises(ConfigError) as info:
        parse_snapshot(snap, features=13, densities=8)
    assert info.value.path == "snapshot.keys[1]"


def test_an_absurd_coefficient_is_clamped_and_the_fit_re_solved() -> None:
    """The finding: 1e9 tokens per KB made every request 'need' millions of tokens."""
    cal = learned()
    snap = snapshot_of(cal)
    snap["keys"][0]["theta"][0] = 1e9
    restored = Calibrator()
    assert restored.restore(snap) == 1
    assert probes(restored) == probes(cal)  # the statistics were honest: the same fit


def test_clamped_values_stay_within_the_settings_bounds() -> None:
    settings = CalibrationSettings()
    snap = snapshot_of(learned())
    entry = snap["keys"][0]
    entry["theta"] = [1e9] * len(entry["theta"])
    entry["densities"] = [5.0] * len(entry["densities"])
    entry["dev_sum"], entry["dev_weight"] = 1e300, 1e-300
    entry["a_upper"] = [0.0] * len(entry["a_upper"])  # nothing to re-solve from but the prior
    entry["b"] = [0.0] * len(entry["b"])
    entry["eager_refits"] = 10**6
    restored = Calibrator(settings)
    assert restored.restore(snap) == 1
    ratio = restored.ratio(KEY)
    assert settings.min_bytes_per_token <= ratio.bytes_per_token <= settings.max_bytes_per_token
    assert ratio.sigma <= settings.max_bytes_per_token / settings.min_bytes_per_token
    point, conservative = restored.estimate_both(KEY, shape(4000))
    assert point <= 4000 / settings.min_bytes_per_token + 100  # framing aside: <= 1 token/byte
    assert conservative <= point * (1 + settings.gamma * ratio.sigma) + 1
    assert restored.snapshot()["keys"][0]["eager_refits"] <= 64
