"""Fault knobs: validation names the field, updates are all-or-nothing, draws follow the rates."""

from __future__ import annotations

import random

import pytest

from litellm_dualpool.emulator.faults import FaultAction, Faults, Refuse
from litellm_dualpool.emulator.outputs import OutputLengths
from litellm_dualpool.emulator.validation import ErrorFormat


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"hang_rate": -0.1}, "hang_rate"),
        ({"drop_rate": "x"}, "drop_rate"),
        ({"latency_seconds": -1}, "latency_seconds"),
        ({"refuse": "sometimes"}, "refuse"),
        ({"refuse_seconds": 0}, "refuse_seconds"),
        ({"no_usage": "yes"}, "no_usage"),
        ({"error_format": "v0"}, "error_format"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_values_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        Faults().update(changes)


def test_update_is_all_or_nothing() -> None:
    faults = Faults()
    with pytest.raises(ValueError):
        faults.update({"error_rate": 0.5, "refuse": "bad"})
    assert faults.error_rate == 0.0


def test_snapshot_round_trips() -> None:
    faults = Faults()
    faults.update({"refuse": "503", "error_format": "legacy", "refuse_seconds": 2, "no_usage": True})
    assert faults.refuse is Refuse.HTTP_503 and faults.error_format is ErrorFormat.LEGACY
    again = Faults()
    again.update(faults.snapshot())
    assert again == faults


def test_draws_follow_the_rates() -> None:
    rng = random.Random(7)
    assert {Faults().draw(rng) for _ in range(100)} == {FaultAction.SERVE}
    assert Faults(hang_rate=1.0, error_rate=1.0).draw(rng) is FaultAction.HANG
    assert Faults(drop_rate=1.0, error_rate=1.0).draw(rng) is FaultAction.DROP
    errors = sum(Faults(error_rate=0.3).draw(rng) is FaultAction.ERROR for _ in range(2000))
    assert 450 < errors < 750


def test_fail_next_fails_exactly_that_many_requests_then_serves() -> None:
    rng = random.Random(7)
    faults = Faults()
    faults.update({"fail_next": 2})
    assert [faults.draw(rng) for _ in range(4)] == [FaultAction.ERROR] * 2 + [FaultAction.SERVE] * 2
    assert faults.snapshot()["fail_next"] == 0
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="fail_next"):
            faults.update({"fail_next": bad})


@pytest.mark.parametrize("spec", ["fixed:0", "uniform:5:2", "exp:0", "normal:3", "fixed:x", "fixed"])
def test_bad_output_length_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="--output-len-dist"):
        OutputLengths.parse(spec)


def test_output_length_draws() -> None:
    rng = random.Random(1)
    assert OutputLengths.parse("fixed:7").draw(rng) == 7
    assert {OutputLengths.parse("uniform:3:4").draw(rng) for _ in range(50)} == {3, 4}
    draws = [OutputLengths.parse("exp:100").draw(rng) for _ in range(4000)]
    assert min(draws) >= 1
    assert 90 < sum(draws) / len(draws) < 110
