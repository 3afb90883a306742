"""Queueing formulas the planner's SLO check is built from: Erlang C and the Allen-Cunneen
approximation of an M/G/c queue's waiting time, with an exponential tail.

Why these: a pool of n identical servers fed by one stream and balanced least-loaded behaves
close to one M/G/c queue (join-the-shortest-queue is near-optimal), and Allen-Cunneen is the
textbook correction of M/M/c for general arrivals and service times: the mean wait scales by
(ca^2 + cs^2)/2, the squared coefficients of variation of inter-arrival and service times. Given a wait, its tail in M/M/c is
exponential with rate (c*mu - lambda); the same scaling is applied to it. Pure math, numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Above this many servers Erlang C is evaluated by the normal (Halfin-Whitt) approximation,
#: which is accurate there and avoids a long recursion.
_EXACT_SERVERS_MAX = 4096


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in M/M/c with ``servers`` servers and offered load
    a = lambda * E[S] (Erlangs). 1.0 when a >= servers (unstable)."""
    if servers < 1:
        raise ValueError("servers must be >= 1")
    if offered_load <= 0.0:
        return 0.0
    if offered_load >= servers:
        return 1.0
    rho = offered_load / servers
    if servers > _EXACT_SERVERS_MAX:
        return _halfin_whitt(servers, offered_load)
    blocking = 1.0  # Erlang B by its stable recursion
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return blocking / (1.0 - rho * (1.0 - blocking))


def _halfin_whitt(servers: int, offered_load: float) -> float:
    beta = (servers - offered_load) / math.sqrt(offered_load)
    if beta > 30.0:  # the density underflows: no one waits
        return 0.0
    phi = math.exp(-beta * beta / 2.0) / math.sqrt(2.0 * math.pi)
    big_phi = 0.5 * (1.0 + math.erf(beta / math.sqrt(2.0)))
    return 1.0 / (1.0 + beta * big_phi / phi)


@dataclass(frozen=True, slots=True)
class WaitDistribution:
    """Wait = 0 with probability 1 - p_wait, else exponential with mean ``mean_if_waiting``."""

    p_wait: float
    mean_if_waiting_seconds: float

    @property
    def mean_seconds(self) -> float:
        return self.p_wait * self.mean_if_waiting_seconds

    def quantile(self, q: float) -> float:
        """The q-quantile of the wait (0 when most arrivals do not wait)."""
        if self.p_wait <= 1.0 - q:
            return 0.0
        if not math.isfinite(self.mean_if_waiting_seconds):
            return math.inf
        return self.mean_if_waiting_seconds * math.log(self.p_wait / (1.0 - q))


def mgc_wait(servers: int, arrival_rate: float, mean_service_seconds: float,
             service_cv2: float, arrival_cv2: float = 1.0) -> WaitDistribution:
    """Allen-Cunneen G/G/c wait: Erlang C probability of waiting; conditional mean wait
    E[S] / (c - a) scaled by (ca^2 + cs^2) / 2 (ca^2 = 1: Poisson arrivals, M/G/c).
    Infinite when the queue is unstable."""
    load = arrival_rate * mean_service_seconds
    if load >= servers:
        return WaitDistribution(1.0, math.inf)
    p_wait = erlang_c(servers, load)
    mean_if_waiting = mean_service_seconds / (servers - load) * (arrival_cv2 + service_cv2) / 2.0
    return WaitDistribution(p_wait, mean_if_waiting)
