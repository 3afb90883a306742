"""A request's routing plan, made once by one entry that the proxy and the simulator share.

`plan_request` takes an estimate (shape, calibration key, token budget), the pools as the policy
sees them and what the caller may ask, and returns a frozen `Plan`: the decision and everything
needed later to place retries, recover a misroute and learn from the backend's count. What
changes while the request is served (where it is placed now, whether it was learned from or
recovered) is a separate mutable `Progress`, so the plan itself can be shared and compared.

`Plan.to_metadata()` renders the plan as plain JSON values (LiteLLM's request metadata is read
and serialised by other loggers); `Plan.from_metadata()` validates and rebuilds one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from operator import attrgetter
from typing import Any

from litellm_dualpool.core.budget import TokenBudget
from litellm_dualpool.core.calibration import CategoryKey
from litellm_dualpool.core.content import CharCounts
from litellm_dualpool.core.estimator import Estimate
from litellm_dualpool.core.policy import (
    CountSource,
    Decision,
    PolicySettings,
    PoolState,
    Reason,
    Tier,
    decide,
    decide_recovery,
)
from litellm_dualpool.core.shape import ContentClass, RequestShape
from litellm_dualpool.core.tenant import ANONYMOUS_TENANT, ObservationTrust
from litellm_dualpool.errors import NoPoolFitsError, PoolNotAllowedError

#: CharCounts' fields in order (dataclasses.astuple deep-copies: ~40x slower per request).
_char_count_values = attrgetter(*(f.name for f in fields(CharCounts)))


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a request goes and why, decided before its first attempt.

    decision: the policy's outcome (pool None when refused: FITS_NOWHERE or NOT_ALLOWED).
    preferred: the pool it would go to without load (the origin of a spillover).
    allowed_pools: the pools the caller may use (None: every pool).
    tenant / trust: who sent it, and how far the backend's count of it may teach.
    tier: how close the estimate lies to a pool limit (`core.policy.Tier`).
    count: where the prompt count the decision used came from (`core.policy.CountSource`).
    arbiter_pool: for an AMBIGUOUS plan, the smaller pool its estimates straddle, whose
        backend can give the exact count (None: nothing to ask).
    """

    id: str
    group: str
    category: str
    budget: TokenBudget
    shape: RequestShape
    decision: Decision
    preferred: str | None
    allowed_pools: frozenset[str] | None
    tenant: str = ANONYMOUS_TENANT
    trust: ObservationTrust = ObservationTrust.TRUSTED
    tier: Tier = Tier.NEAR
    count: CountSource = CountSource.ESTIMATED
    arbiter_pool: str | None = None

    @property
    def key(self) -> CategoryKey:
        return CategoryKey(self.group, self.category)

    @property
    def total_tokens(self) -> int:
        return self.budget.total_tokens

    def refusal(self) -> NoPoolFitsError | None:
        """The error a refused plan answers with (a 400 at the edge), else None."""
        if self.decision.pool is not None:
            return None
        error = (PoolNotAllowedError if self.decision.reason is Reason.NOT_ALLOWED
                 else NoPoolFitsError)
        return error(model_group=self.group, budget_tokens=self.total_tokens,
                     largest_limit_tokens=self.decision.limit_tokens)

    def to_metadata(self) -> dict[str, Any]:
        """The plan as plain JSON values."""
        b = self.budget
        return {
            "id": self.id, "group": self.group, "category": self.category,
            "budget": [b.prompt_tokens, b.output_tokens, b.sequences, b.prompt_tokens_point,
                       b.prompt_tokens_optimistic],
            "shape": shape_to_list(self.shape),
            "decision": [self.decision.pool, self.decision.reason.value,
                         self.decision.budget_tokens, self.decision.limit_tokens],
            "preferred": self.preferred,
            "allowed": sorted(self.allowed_pools) if self.allowed_pools is not None else None,
            "tenant": self.tenant, "trust": self.trust.value,
            "tier": self.tier.value, "count": self.count.value, "arbiter": self.arbiter_pool,
        }

    @classmethod
    def from_metadata(cls, data: Mapping[str, Any]) -> Plan:
        """Rebuild a plan from `to_metadata()`'s values; ValueError when they do not fit."""
        try:
            prompt, output, sequences, point, optimistic = data["budget"]
            pool, reason, budget_tokens, limit_tokens = data["decision"]
            allowed = data["allowed"]
            plan = cls(
                id=_str(data["id"]), group=_str(data["group"]), category=_str(data["category"]),
                budget=TokenBudget(_int(prompt), _int(output), _int(sequences),
                                   _int_or_none(point), _int_or_none(optimistic)),
                shape=shape_from_list(data["shape"]),
                decision=Decision(None if pool is None else _str(pool), Reason(reason),
                                  _int(budget_tokens), _int(limit_tokens),
                                  _str(data["category"])),
                preferred=None if data["preferred"] is None else _str(data["preferred"]),
                allowed_pools=None if allowed is None else frozenset(map(_str, _list(allowed))),
                tenant=_str(data["tenant"]), trust=ObservationTrust(data["trust"]),
                tier=Tier(data.get("tier", Tier.NEAR.value)),
                count=CountSource(data.get("count", CountSource.ESTIMATED.value)),
                arbiter_pool=None if data.get("arbiter") is None else _str(data["arbiter"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a plan: {error!r}") from None
        return plan


class RecoveryFailure(StrEnum):
    """How a misroute-recovery hop ended when it failed for good."""

    CONTEXT = "context"  # the larger pool rejected the request for its length too: fits nowhere
    ERROR = "error"      # the larger pool failed otherwise (5xx, timeout, down)


@dataclass(slots=True)
class Progress:
    """What changes while one planned request is served (one per request, not shared).

    pool / reason / preferred: the current placement (a failover or a recovery moves it).
    placed: the last (pool, reason) placed; the first is the request's decision (counted once),
        later ones are hops (retries, failovers, the recovery hop).
    recovered_from: the pool whose context-length rejection sent the request on, once.
    recovery_failure: how the recovery hop failed, if it did.
    stream: the client asked for a stream (its usage arrives in the last chunk).
    """

    pool: str
    reason: Reason
    preferred: str | None
    placed: tuple[str, Reason] | None = None
    learned: bool = False
    recovered_from: str | None = None
    recovery_counted: bool = False
    recovery_failure: RecoveryFailure | None = None
    stream: bool = False

    @property
    def rejected_by(self) -> str:
        """The pool a context-length rejection came from: the current placement at the first
        rejection; after a recovery, the pool recovered from (a retry of the recovery hop, whose
        pool failed otherwise, stays in the pool the first hop chose)."""
        return self.recovered_from or self.pool

    @classmethod
    def start(cls, plan: Plan, *, stream: bool = False) -> Progress:
        if plan.decision.pool is None:
            raise ValueError("a refused plan is not served")
        return cls(plan.decision.pool, plan.decision.reason, plan.preferred, stream=stream)


def plan_request(estimate: Estimate, pools: Sequence[PoolState], settings: PolicySettings, *,
                 plan_id: str = "", allowed_pools: frozenset[str] | None = None,
                 forced_pool: str | None = None, tenant: str = ANONYMOUS_TENANT,
                 trust: ObservationTrust = ObservationTrust.TRUSTED) -> Plan:
    """Decide where a request goes. The one entry of the proxy and the simulator: the same
    estimate and pool snapshots give the same plan in both. A refusal is a plan too
    (`Plan.refusal()` names the error)."""
    budget = estimate.budget
    decision = decide(budget.total_tokens, pools, settings, allowed_pools=allowed_pools,
                      forced_pool=forced_pool, floor_tokens=budget.refusal_floor_tokens,
                      category=estimate.key.category)
    preferred = decision.pool
    if decision.reason is Reason.SPILLOVER:  # where it would have gone at no load
        idle = [PoolState(p.name, p.max_model_len) for p in pools]
        preferred = decide(budget.total_tokens, idle, settings, allowed_pools=allowed_pools,
                           floor_tokens=budget.refusal_floor_tokens).pool
    shape = estimate.shape
    count = (CountSource.EXACT if shape.total_bytes == 0 and shape.exact_prompt_tokens is not None
             and not shape.media_count else CountSource.ESTIMATED)
    arbiter = None
    if (estimate.tier is Tier.AMBIGUOUS and forced_pool is None and decision.pool is not None
            and not shape.media_count and shape.exact_prompt_tokens is None):
        idle = [PoolState(p.name, p.max_model_len) for p in pools]
        optimistic = budget.prompt_tokens_optimistic
        smaller = decide((budget.prompt_tokens if optimistic is None else optimistic)
                         + budget.output_tokens, idle, settings,
                         allowed_pools=allowed_pools).pool
        arbiter = smaller if smaller is not None and smaller != preferred else None
    return Plan(plan_id, estimate.key.model_group, estimate.key.category, budget, estimate.shape,
                decision, preferred, allowed_pools, tenant, trust, estimate.tier, count, arbiter)


def plan_counted(plan: Plan, prompt_tokens: int, pools: Sequence[PoolState],
                 settings: PolicySettings) -> Plan:
    """The plan of an AMBIGUOUS request once its exact prompt count is known (the backend's
    own tokenizer): the same request decided by that count, without headroom (headroom is a
    margin for an estimate's error; vLLM admits `prompt + max_tokens <= max_model_len`)."""
    if type(prompt_tokens) is not int or prompt_tokens < 0:
        raise ValueError(f"prompt_tokens must be a non-negative integer, got {prompt_tokens!r}")
    b = plan.budget
    budget = TokenBudget(prompt_tokens, b.output_tokens, b.sequences, prompt_tokens,
                         prompt_tokens)
    exact = replace(settings, headroom_fraction=0.0)
    decision = decide(budget.total_tokens, pools, exact, allowed_pools=plan.allowed_pools,
                      floor_tokens=budget.refusal_floor_tokens, category=plan.category)
    preferred = decision.pool
    if decision.reason is Reason.SPILLOVER:
        idle = [PoolState(p.name, p.max_model_len) for p in pools]
        preferred = decide(budget.total_tokens, idle, exact, allowed_pools=plan.allowed_pools,
                           floor_tokens=budget.refusal_floor_tokens).pool
    return replace(plan, budget=budget, decision=decision, preferred=preferred,
                   count=CountSource.ARBITRATED, arbiter_pool=None)


def plan_recovery(plan: Plan, progress: Progress, pools: Sequence[PoolState]) -> Decision:
    """The pool a context-length rejection sends the request on to: the smallest allowed pool
    larger than the one that rejected it (`Progress.rejected_by`)."""
    return decide_recovery(plan.total_tokens, pools, progress.rejected_by,
                           allowed_pools=plan.allowed_pools, category=plan.category)


def shape_to_list(shape: RequestShape) -> list[Any]:
    """A shape as plain values (its character counts ride along: without them the calibrator
    falls back to the key's average character mix)."""
    return [shape.text_bytes, shape.structured_bytes, shape.message_count, shape.tool_count,
            shape.image_count, shape.audio_count, shape.exact_prompt_tokens,
            shape.content_class.value, shape.file_count, shape.chat_template, shape.has_tools,
            None if shape.char_counts is None else list(_char_count_values(shape.char_counts))]


def shape_from_list(values: Sequence[Any]) -> RequestShape:
    """The inverse of `shape_to_list`; ValueError for values of the wrong kind."""
    try:
        (text, structured, messages, tools, images, audio, exact, content, files, template,
         has_tools, counts) = values
    except (TypeError, ValueError):
        raise ValueError("a shape is a list of 12 values") from None
    return RequestShape(
        _int(text), _int(structured), _int(messages), _int(tools), _int(images), _int(audio),
        _int_or_none(exact), ContentClass(content), _int(files), _bool(template),
        _bool(has_tools),
        char_counts=None if counts is None else CharCounts(*map(_int, counts)))


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _int_or_none(value: Any) -> int | None:
    return None if value is None else _int(value)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value
