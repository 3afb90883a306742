"""The paired block bootstrap behind the preemption reduction's interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from litellm_dualpool.sim.compare import block_bootstrap_interval, paired_ratio_interval


def _arrivals(count: int, span: float) -> np.ndarray:
    return np.linspace(0.0, span, count, endpoint=False)


def test_steady_ratio_has_a_narrow_interval_around_it() -> None:
    # every block: 10 baseline events, 2 candidate events -> the ratio is 5 in every draw
    arrivals = _arrivals(600, 600.0)
    base = np.where(np.arange(600) % 6 == 0, 1, 0)  # 100 events, 10 per 60 s block
    cand = np.where(np.arange(600) % 30 == 0, 1, 0)  # 20 events, 2 per block
    iv = paired_ratio_interval(base, cand, arrivals, block_seconds=60.0)
    assert (iv.baseline_events, iv.candidate_events, iv.blocks) == (100, 20, 10)
    assert iv.ratio == pytest.approx(5.0)
    assert iv.low == pytest.approx(5.0) and iv.high == pytest.approx(5.0)
    assert iv.at_least(5.0) and not iv.at_least(5.4)


def test_one_burst_gives_a_wide_interval() -> None:
    # the same totals (100 vs 20) but all baseline events in one block: resampling that block
    # in or out swings the ratio, so the interval must reach far below and above 5
    arrivals = _arrivals(600, 600.0)
    base = np.zeros(600, dtype=int)
    base[:100] = 1  # the first 100 requests arrive in the first 100 s: blocks 0 and 1
    cand = np.where(np.arange(600) % 30 == 0, 1, 0)
    iv = paired_ratio_interval(base, cand, arrivals, block_seconds=60.0)
    assert iv.ratio == pytest.approx(5.0)
    assert iv.low is not None and iv.high is not None
    assert iv.low < 2.0 and iv.high > 9.0
    assert not iv.at_least(5.0)


def test_no_candidate_events_gives_a_conservative_lower_bound() -> None:
    arrivals = _arrivals(600, 600.0)
    base = np.where(np.arange(600) % 6 == 0, 1, 0)
    iv = paired_ratio_interval(base, np.zeros(600), arrivals, block_seconds=60.0)
    assert iv.ratio == math.inf and iv.high == math.inf
    # the bound credits the candidate with one event: 100 baseline events in every draw
    assert iv.low == pytest.approx(100.0)


def test_no_events_at_all_gives_no_ratio() -> None:
    iv = paired_ratio_interval(np.zeros(10), np.zeros(10), _arrivals(10, 100.0))
    assert iv.ratio is None and iv.low is None and not iv.at_least(1.0)


def test_arrays_must_describe_the_same_requests() -> None:
    with pytest.raises(ValueError, match="one entry per request"):
        paired_ratio_interval(np.zeros(3), np.zeros(4), np.zeros(3))


def test_block_bootstrap_of_a_constant_statistic_has_no_width() -> None:
    arrivals = _arrivals(100, 50.0)
    iv = block_bootstrap_interval(arrivals, lambda idx: 0.25, block_seconds=5.0, draws=50)
    assert (iv.value, iv.low, iv.high, iv.blocks) == (0.25, 0.25, 0.25, 10)


def test_block_bootstrap_draws_whole_blocks_with_replacement() -> None:
    # the statistic is the share of requests from the first 5 s block (10 of 100): a draw of
    # whole blocks holds 0, 10, 20... of them, so every drawn share is a multiple of 1/10
    arrivals = _arrivals(100, 50.0)
    shares: list[float] = []

    def statistic(idx: np.ndarray) -> float:
        share = float((idx < 10).mean())
        shares.append(share)
        return share

    iv = block_bootstrap_interval(arrivals, statistic, block_seconds=5.0, draws=200, seed=1)
    assert iv.value == pytest.approx(0.1)
    assert all(math.isclose(s * 10, round(s * 10)) for s in shares)
    assert iv.low < 0.1 < iv.high  # some draws miss the block, some take it twice
    with pytest.raises(ValueError):
        block_bootstrap_interval(arrivals, statistic, block_seconds=0.0)
