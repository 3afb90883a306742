"""Dispatch policy: snapshots of pools in, one Decision out.

CONTRACT (filled in by the core issue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Why a request went where it went (a bounded metric label)."""

    FITS = "fits"                      # the smallest pool that fits
    SPILLOVER = "spillover"            # preferred pool saturated, sent to a larger one
    FORCED = "forced"                  # per-request override allowed by policy
    RECOVERY = "misroute_recovery"     # a backend rejected for context length; next larger pool
    FITS_NOWHERE = "fits_nowhere"      # larger than every pool -> 400
    NOT_ALLOWED = "not_allowed"        # only a pool the tenant may not use would fit -> 400


@dataclass(frozen=True, slots=True)
class PoolState:
    """A pool as the policy sees it at decision time.

    load_fraction: in-flight requests over the pool's concurrency (0..1+), None when unknown.
    """

    name: str
    max_model_len: int
    load_fraction: float | None = None


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """headroom_fraction: safety margin on the estimate (budget * (1 + headroom) must fit).
    spillover_load_fraction: preferred pool at or above this load sends to the next larger pool
    that is below it (None disables spillover)."""

    headroom_fraction: float = 0.0
    spillover_load_fraction: float | None = 0.9


@dataclass(frozen=True, slots=True)
class Decision:
    """pool is None exactly when reason is FITS_NOWHERE or NOT_ALLOWED."""

    pool: str | None
    reason: Reason
    budget_tokens: int
    limit_tokens: int


def decide(
    budget_tokens: int,
    pools: Sequence[PoolState],
    settings: PolicySettings,
    *,
    allowed_pools: frozenset[str] | None = None,
    forced_pool: str | None = None,
) -> Decision:
    """Smallest pool whose max_model_len fits the budget (with headroom), spillover when it is
    saturated, a final fit check, and an explicit FITS_NOWHERE/NOT_ALLOWED outcome."""
    raise NotImplementedError
