"""How sure a comparison of two simulated fleets is, when both served the same arrivals.

Rare events (preemptions) come in bursts: a cluster of long requests fills the KV cache and
several running requests are preempted within seconds. Treating the events as independent
(a Poisson interval on the counts) overstates the certainty of a ratio, so the interval here is
a paired block bootstrap: arrivals are cut into blocks of ``block_seconds``, blocks are drawn
with replacement, and both fleets' events of a drawn block come along together.
``block_bootstrap_interval`` does the same for any statistic of the requests (the simulated
saving of a split against a homogeneous fleet, each sized on the same arrivals).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class RatioInterval:
    """``baseline / candidate`` event totals, with a bootstrap interval (inf: the candidate had
    none; None: neither had any)."""

    ratio: float | None
    low: float | None
    high: float | None
    level: float
    blocks: int
    baseline_events: int
    candidate_events: int

    def at_least(self, target: float) -> bool:
        """Whether the interval's lower end reaches ``target`` (the ratio is surely that big)."""
        return self.low is not None and self.low >= target


def paired_ratio_interval(baseline_events: np.ndarray, candidate_events: np.ndarray,
                          arrival_seconds: np.ndarray, *, block_seconds: float = 60.0,
                          draws: int = 2000, level: float = 0.95, seed: int = 0) -> RatioInterval:
    """Ratio of total events per request, baseline over candidate, for the same requests (one
    entry per request in each array), with a ``level`` percentile interval from a paired block
    bootstrap over ``block_seconds`` windows of arrival time."""
    base = np.asarray(baseline_events, dtype=np.float64)
    cand = np.asarray(candidate_events, dtype=np.float64)
    arrivals = np.asarray(arrival_seconds, dtype=np.float64)
    if not base.shape == cand.shape == arrivals.shape:
        raise ValueError("one entry per request in each array")
    if block_seconds <= 0 or draws < 1 or not 0 < level < 1:
        raise ValueError("block_seconds > 0, draws >= 1 and 0 < level < 1")
    b_total, c_total = int(base.sum()), int(cand.sum())
    if b_total == 0 and c_total == 0:
        return RatioInterval(None, None, None, level, 0, 0, 0)
    block = ((arrivals - arrivals.min()) // block_seconds).astype(np.int64) if len(arrivals) else arrivals
    blocks = int(block.max()) + 1
    b_sums = np.bincount(block, weights=base, minlength=blocks)
    c_sums = np.bincount(block, weights=cand, minlength=blocks)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, blocks, size=(draws, blocks))
    b_draw, c_draw = b_sums[picks].sum(axis=1), c_sums[picks].sum(axis=1)
    tail = (1.0 - level) / 2.0
    if c_total == 0:
        # no candidate event at all: the ratio is unbounded above, and a bound below comes from
        # crediting the candidate with one event (conservative: it surely had fewer than that)
        return RatioInterval(math.inf, float(np.quantile(b_draw, tail, method="lower")), math.inf,
                             level, blocks, b_total, c_total)
    drawn = (b_draw > 0) | (c_draw > 0)
    with np.errstate(divide="ignore"):
        ratios = np.where(c_draw[drawn] > 0, b_draw[drawn] / np.maximum(c_draw[drawn], 1.0), math.inf)
    # "lower"/"higher" pick drawn values: interpolating between two infinities gives nan
    return RatioInterval(b_total / c_total, float(np.quantile(ratios, tail, method="lower")),
                         float(np.quantile(ratios, 1.0 - tail, method="higher")), level, blocks,
                         b_total, c_total)


@dataclass(frozen=True, slots=True)
class Interval:
    """A statistic with a ``level`` percentile interval from a block bootstrap."""

    value: float
    low: float
    high: float
    level: float
    blocks: int


def block_bootstrap_interval(arrival_seconds: np.ndarray, statistic: Callable[[np.ndarray], float], *,
                             block_seconds: float = 5.0, draws: int = 300, level: float = 0.95,
                             seed: int = 0) -> Interval:
    """``statistic`` of the requests (a function of the indices of the requests drawn, with
    repetition) with a ``level`` percentile interval from a block bootstrap over
    ``block_seconds`` windows of arrival time: whole blocks are drawn with replacement, so a
    burst and the queue it builds stay together. Pass one statistic that reads every compared
    fleet's outcome for the same indices and the interval is paired (the fleets served the
    same arrivals)."""
    arrivals = np.asarray(arrival_seconds, dtype=np.float64)
    if block_seconds <= 0 or draws < 1 or not 0 < level < 1:
        raise ValueError("block_seconds > 0, draws >= 1 and 0 < level < 1")
    if not len(arrivals):
        raise ValueError("no requests")
    block = ((arrivals - arrivals.min()) // block_seconds).astype(np.int64)
    blocks = int(block.max()) + 1
    order = np.argsort(block, kind="stable")
    starts = np.searchsorted(block[order], np.arange(blocks + 1))
    members = [order[starts[b]:starts[b + 1]] for b in range(blocks)]
    rng = np.random.default_rng(seed)
    values = np.array([statistic(np.concatenate([members[b] for b in rng.integers(0, blocks, blocks)]))
                       for _ in range(draws)])
    tail = (1.0 - level) / 2.0
    return Interval(statistic(np.arange(len(arrivals))), float(np.quantile(values, tail)),
                    float(np.quantile(values, 1.0 - tail)), level, blocks)
