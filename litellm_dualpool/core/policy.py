"""Dispatch policy: snapshots of pools in, one Decision out.

The rule, for any number of pools sorted by max_model_len: the preferred pool is the smallest
allowed one whose limit fits the budget with headroom (`ceil(budget * (1 + headroom))`); if none
fits with headroom, the smallest that fits the bare budget. Spillover: when the preferred pool's
load is at or above `spillover_load_fraction`, the request goes to the next larger fitting pool
whose load is below it (sending a short request to a long pool is always safe; the reverse never
happens, since a smaller pool than the preferred one does not fit). A forced pool is honoured
only if it is allowed and fits. Every returned pool passes a final check `budget <= limit`;
otherwise the outcome is FITS_NOWHERE (nothing fits) or NOT_ALLOWED (only a forbidden pool
fits), both carrying the numbers for a clear 400.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from litellm_dualpool.errors import ConfigError, InvalidRequestError


class Reason(StrEnum):
    """Why a request went where it went (a bounded metric label)."""

    FITS = "fits"                      # the smallest pool that fits
    SPILLOVER = "spillover"            # preferred pool saturated, sent to a larger one
    FORCED = "forced"                  # per-request override allowed by policy
    RECOVERY = "misroute_recovery"     # a backend rejected for context length; next larger pool
    BORDERLINE = "borderline"          # over every pool by the budget, but the largest may serve it
                                       # (optimistic prompt, vLLM lowering max_tokens): that backend decides
    FITS_NOWHERE = "fits_nowhere"      # larger than every pool -> 400
    NOT_ALLOWED = "not_allowed"        # only a pool the tenant may not use would fit -> 400
    AFFINITY = "affinity"              # held up in its conversation's larger pool (core/affinity.py)


class Tier(StrEnum):
    """How close a request's estimate lies to a pool limit (a bounded metric label).

    The one rule (`tier_of`): a range of budgets whose every value goes to the same pool at no
    load does not need a finer estimate. FAR: the wide bytes-only range (`Calibrator.
    estimate_far`) lands in one pool with headroom, so the character counts are skipped. NEAR:
    the usual estimate's optimistic..conservative range lands in one pool. AMBIGUOUS: that range
    straddles a pool limit; only the exact count can tell (arbitration asks the backend).
    """

    FAR = "far"
    NEAR = "near"
    AMBIGUOUS = "ambiguous"


class CountSource(StrEnum):
    """Where the prompt token count a decision used came from (the ``x-dualpool-count``
    header): estimated from bytes, exact (a token-id prompt), or arbitrated (the backend's own
    tokenizer answered ``POST /tokenize``)."""

    ESTIMATED = "estimated"
    EXACT = "exact"
    ARBITRATED = "arbitrated"


def idle_choice(budget_tokens: int, limits: Sequence[int],
                headroom_fraction: float) -> tuple[int | None, bool]:
    """(index of the pool `decide` prefers at no load among ascending `limits`, whether it fits
    with headroom); index None when the budget fits no pool. Spillover, tenants and forced pools
    are not considered: the tiers ask how precise the count must be, not where load sends it."""
    needed = math.ceil(budget_tokens * (1.0 + headroom_fraction))
    bare = None
    for i, limit in enumerate(limits):
        if needed <= limit:
            return i, True
        if bare is None and budget_tokens <= limit:
            bare = i
    return bare, False


def tier_of(low_tokens: int, high_tokens: int, limits: Sequence[int],
            headroom_fraction: float, *, wide: bool) -> Tier:
    """The tier of a request whose total budget lies in [low_tokens, high_tokens].

    wide: the range is the far tier's bytes-only one; FAR when every budget in it goes to the
    same pool with headroom, else NEAR (meaning: compute the usual estimate). Otherwise the
    range is the usual optimistic..conservative one: AMBIGUOUS when its ends go to different
    pools, else NEAR."""
    low, low_roomy = idle_choice(low_tokens, limits, headroom_fraction)
    high, high_roomy = idle_choice(high_tokens, limits, headroom_fraction)
    if wide:
        return Tier.FAR if high is not None and high_roomy and low == high and low_roomy else (
            Tier.NEAR)
    return Tier.AMBIGUOUS if low is not None and low != high else Tier.NEAR


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

    def __post_init__(self) -> None:
        if not (math.isfinite(self.headroom_fraction) and 0.0 <= self.headroom_fraction <= 1.0):
            raise ConfigError(f"must be in [0, 1], got {self.headroom_fraction!r}",
                              path="headroom_fraction")
        spill = self.spillover_load_fraction
        if spill is not None and not (math.isfinite(spill) and spill > 0.0):
            raise ConfigError(f"must be > 0 or None, got {spill!r}", path="spillover_load_fraction")


@dataclass(frozen=True, slots=True)
class Decision:
    """pool is None exactly when reason is FITS_NOWHERE or NOT_ALLOWED.

    limit_tokens: the chosen pool's max_model_len; for FITS_NOWHERE the largest pool's, for
        NOT_ALLOWED the largest allowed pool's (0 when none is allowed).
    category: the calibration category the budget was estimated with, when the caller gave it.
    """

    pool: str | None
    reason: Reason
    budget_tokens: int
    limit_tokens: int
    category: str | None = None


def sort_pools(pools: Sequence[PoolState]) -> list[PoolState]:
    """Pools by (max_model_len, name); ConfigError for an empty list, duplicates or bad limits."""
    if not pools:
        raise ConfigError("at least one pool is needed", path="pools")
    if len(pools) == 2:  # the usual case, checked without a set or a sort (~1 us per decision)
        a, b = pools
        if (type(a.max_model_len) is int and type(b.max_model_len) is int
                and a.max_model_len > 0 and b.max_model_len > 0 and a.name != b.name):
            return [a, b] if (a.max_model_len, a.name) <= (b.max_model_len, b.name) else [b, a]
    seen: set[str] = set()
    for i, pool in enumerate(pools):
        if type(pool.max_model_len) is not int or pool.max_model_len <= 0:
            raise ConfigError(f"max_model_len must be a positive integer, got "
                              f"{pool.max_model_len!r}", path=f"pools[{i}].max_model_len")
        if pool.name in seen:
            raise ConfigError(f"duplicate pool name {pool.name!r}", path=f"pools[{i}].name")
        seen.add(pool.name)
    return sorted(pools, key=lambda p: (p.max_model_len, p.name))


def _saturated(pool: PoolState, threshold: float | None) -> bool:
    return threshold is not None and pool.load_fraction is not None and (
        pool.load_fraction >= threshold)


def decide(
    budget_tokens: int,
    pools: Sequence[PoolState],
    settings: PolicySettings,
    *,
    allowed_pools: frozenset[str] | None = None,
    forced_pool: str | None = None,
    category: str | None = None,
    floor_tokens: int | None = None,
) -> Decision:
    """Smallest pool whose max_model_len fits the budget (with headroom), spillover when it is
    saturated, a final fit check, and an explicit FITS_NOWHERE/NOT_ALLOWED outcome.

    floor_tokens: the least window the request can be served in (``TokenBudget.
    refusal_floor_tokens``: the optimistic prompt plus one token, or the output budget). A
    request over every pool by ``budget_tokens`` but within the largest by ``floor_tokens`` goes
    to the largest pool (BORDERLINE): refusing it would turn away requests the backend serves,
    and its exact count costs one fast 400 when it cannot."""
    if type(budget_tokens) is not int or budget_tokens < 0:
        raise InvalidRequestError(f"budget must be a non-negative integer, got {budget_tokens!r}",
                                  field="budget_tokens")
    ordered = sort_pools(pools)
    needed = math.ceil(budget_tokens * (1.0 + settings.headroom_fraction))
    fitting = [p for p in ordered if budget_tokens <= p.max_model_len]
    borderline = False
    if not fitting:
        if floor_tokens is None or floor_tokens > ordered[-1].max_model_len:
            return Decision(None, Reason.FITS_NOWHERE, budget_tokens, ordered[-1].max_model_len,
                            category)
        fitting = [p for p in ordered if p.max_model_len == ordered[-1].max_model_len]
        borderline = True
    allowed = [p for p in fitting if allowed_pools is None or p.name in allowed_pools]
    if not allowed:
        limits = [p.max_model_len for p in ordered
                  if allowed_pools is None or p.name in allowed_pools]
        return Decision(None, Reason.NOT_ALLOWED, budget_tokens, max(limits, default=0), category)
    if forced_pool is not None:
        for pool in allowed:
            if pool.name == forced_pool:
                return Decision(pool.name, Reason.FORCED, budget_tokens, pool.max_model_len,
                                category)
    roomy = [p for p in allowed if needed <= p.max_model_len]
    candidates = roomy or allowed[-1:]
    if borderline:  # the only pool that may fit: no spillover, no final budget check
        return Decision(candidates[0].name, Reason.BORDERLINE, budget_tokens,
                        candidates[0].max_model_len, category)
    chosen, reason = candidates[0], Reason.FITS
    threshold = settings.spillover_load_fraction
    if _saturated(chosen, threshold):
        for pool in candidates[1:]:
            if not _saturated(pool, threshold):
                chosen, reason = pool, Reason.SPILLOVER
                break
    if budget_tokens > chosen.max_model_len:  # final check (cannot trigger; kept as the guard)
        return Decision(None, Reason.FITS_NOWHERE, budget_tokens, ordered[-1].max_model_len,
                        category)
    return Decision(chosen.name, reason, budget_tokens, chosen.max_model_len, category)


def decide_recovery(
    budget_tokens: int,
    pools: Sequence[PoolState],
    failed_pool: str,
    *,
    allowed_pools: frozenset[str] | None = None,
    category: str | None = None,
) -> Decision:
    """After `failed_pool` rejected the request for its context length: the smallest allowed
    pool with a strictly larger max_model_len (reason RECOVERY), else FITS_NOWHERE."""
    ordered = sort_pools(pools)
    failed = next((p for p in ordered if p.name == failed_pool), None)
    floor = failed.max_model_len if failed is not None else 0
    for pool in ordered:
        if pool.max_model_len > floor and budget_tokens <= pool.max_model_len and (
                allowed_pools is None or pool.name in allowed_pools):
            return Decision(pool.name, Reason.RECOVERY, budget_tokens, pool.max_model_len,
                            category)
    return Decision(None, Reason.FITS_NOWHERE, budget_tokens, ordered[-1].max_model_len, category)


def failover_pool(budget_tokens: int, current: str, pools: Sequence[PoolState],
                  available: Collection[str], *,
                  allowed_pools: frozenset[str] | None = None) -> str | None:
    """The pool a request planned for `current` goes to when `current` has no healthy
    deployment: the smallest other pool in `available` (those with one) that the budget fits
    and that the caller may use. A larger pool is always safe; a smaller one only when the
    budget fits it. None when no pool qualifies (the request then fails as LiteLLM says)."""
    for pool in sort_pools(pools):
        if (pool.name != current and pool.name in available
                and budget_tokens <= pool.max_model_len
                and (allowed_pools is None or pool.name in allowed_pools)):
            return pool.name
    return None
