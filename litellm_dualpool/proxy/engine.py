"""The plugin's routing brain, free of LiteLLM types: plan a request, narrow a deployment list to
its pool, and learn when an attempt ends.

Per request the plan is kept as a small dict of plain values (the "stash") in the request's
metadata, which LiteLLM carries unchanged from the proxy's pre-call hook through every routing
attempt (fallback hops included) to the success and failure events. Plain values, because other
loggers serialise metadata; the estimate is rebuilt from them when it is time to learn.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from operator import attrgetter
from typing import Any

from litellm_dualpool.config import GroupSpec, PluginConfig, PoolSpec
from litellm_dualpool.core.calibration import MAX_PROMPT_TOKENS, Calibrator, CategoryKey
from litellm_dualpool.core.content import CharCounts
from litellm_dualpool.core.estimator import Estimator
from litellm_dualpool.core.policy import PoolState, Reason, decide, decide_recovery
from litellm_dualpool.core.shape import (
    ContentClass,
    RequestShape,
    prompt_tokens_plausible,
    prompt_tokens_upper_bound,
)
from litellm_dualpool.errors import NoPoolFitsError, PoolNotAllowedError, RecoveryRefusedError
from litellm_dualpool.metrics import DualPoolMetrics
from litellm_dualpool.proxy.inflight import InFlight
from litellm_dualpool.proxy.policy import TenantPolicy
from litellm_dualpool.proxy.rejections import parse_context_rejection
from litellm_dualpool.state import Outcome, StateConfig, StateStore, build_store
from litellm_dualpool.tenancy import ANONYMOUS_TENANT, ObservationTrust

logger = logging.getLogger("litellm_dualpool")

#: Metadata key of the per-request plan. Overwritten by the pre-call hook (a client cannot forge it).
STASH_KEY = "_dualpool"
#: Optional extra load signal: (model group, pool) -> load fraction, or None when unknown.
LoadSource = Callable[[str, PoolSpec], float | None]


#: CharCounts' fields in order (dataclasses.astuple deep-copies: ~40x slower per request).
_char_count_values = attrgetter(*(f.name for f in fields(CharCounts)))


def _shape_to_list(shape: RequestShape) -> list[Any]:
    return [shape.text_bytes, shape.structured_bytes, shape.message_count, shape.tool_count,
            shape.image_count, shape.audio_count, shape.exact_prompt_tokens,
            shape.content_class.value, shape.file_count, shape.chat_template, shape.has_tools,
            None if shape.char_counts is None else list(_char_count_values(shape.char_counts))]


def _shape_from_list(values: Sequence[Any]) -> RequestShape:
    # The character counts ride along: without them the calibrator falls back to the key's
    # average character mix and learns a plain ratio.
    (text, structured, messages, tools, images, audio, exact, content, files, template,
     has_tools, counts) = values
    return RequestShape(text, structured, messages, tools, images, audio, exact,
                        ContentClass(content), files, template, has_tools,
                        char_counts=None if counts is None else CharCounts(*counts))


class DualPoolEngine:
    """Plans, filters and learns for every dual-pool model group of one LiteLLM config."""

    def __init__(self, config: PluginConfig, *, metrics: DualPoolMetrics | None = None,
                 calibrator: Calibrator | None = None, inflight: InFlight | None = None,
                 load_source: LoadSource | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 store: StateStore | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.groups = config.groups
        self.metrics = metrics or DualPoolMetrics()
        if store is None:
            store = build_store(StateConfig(influence=self.settings.state.influence),
                                calibrator or Calibrator(self.settings.calibration.to_core()),
                                metrics=self.metrics)
        #: Where learning goes (state/): in process, or shared through Redis.
        self.store = store
        self.calibrator = store.calibrator
        self.estimator = Estimator(self.calibrator,
                                   default_output_tokens=self.settings.default_output_tokens)
        self.inflight = inflight or InFlight()
        self.load_source = load_source
        self._clock = clock
        #: Plan ids: unique per engine, cheaper than a uuid4 per request (~2.5 us).
        self._id_prefix = uuid.uuid4().hex[:12] + "-"
        self._ids = itertools.count(1)
        self._policy = self.settings.policy_settings()
        suffix = self.settings.recovery.group_suffix
        self.recovery_groups: dict[str, str] = (
            {g + suffix: g for g in self.groups} if self.settings.recovery.enabled else {})

    # -- pools -----------------------------------------------------------------------------
    def group_for(self, model: object) -> GroupSpec | None:
        """The dual-pool group a model name (or its hidden recovery group) belongs to."""
        if not isinstance(model, str):
            return None
        group = self.groups.get(model)
        if group is None and model in self.recovery_groups:
            group = self.groups[self.recovery_groups[model]]
        return group

    def pool_of(self, group: GroupSpec, deployment: Mapping[str, Any] | None) -> PoolSpec | None:
        info = (deployment or {}).get("model_info") or {}
        label = info.get("pool")
        if isinstance(label, str):
            pool = group.pool(label)
            if pool is not None:
                return pool
        return group.pool_for_len(info.get("max_model_len"))

    def pool_states(self, group: GroupSpec) -> list[PoolState]:
        states = []
        for pool in group.pools:
            load = self.inflight.pool(group.model_group, pool.name) / pool.max_in_flight
            if self.load_source is not None:
                external = self.load_source(group.model_group, pool)
                if external is not None:
                    load = max(load, external)
            states.append(PoolState(pool.name, pool.max_model_len, load))
        return states

    # -- planning --------------------------------------------------------------------------
    def overrides(self, metadata: Mapping[str, Any] | None, policy: TenantPolicy,
                  group: GroupSpec) -> tuple[str | None, str | None]:
        """(forced pool, category) from request metadata, where the caller's policy allows."""
        entry = (metadata or {}).get(self.settings.overrides.metadata_key)
        if not isinstance(entry, Mapping):
            return None, None
        forced = entry.get("pool")
        forced = forced if (policy.allow_force_pool and isinstance(forced, str)
                            and group.pool(forced) is not None) else None
        category = entry.get("category")
        allowed = self.settings.overrides.categories
        category = category if (policy.allow_category and isinstance(category, str)
                                and (allowed is None or category in allowed)) else None
        return forced, category

    def plan(self, body: Mapping[str, Any], group: GroupSpec, policy: TenantPolicy, *,
             metadata: Mapping[str, Any] | None = None, embedding: bool = False) -> dict[str, Any]:
        """Estimate and decide; the stash to keep in the request's metadata.

        Raises NoPoolFitsError / PoolNotAllowedError (-> 400) and InvalidRequestError."""
        started = self._clock()
        forced, category = self.overrides(metadata, policy, group)
        category = policy.category or category
        allowed_pools = policy.pools_for([p.name for p in group.pools])
        estimate = self.estimator.estimate(
            body, group.model_group, category=category,
            default_output_tokens=policy.default_output_tokens, embedding=embedding)
        budget = estimate.budget.total_tokens
        decision = decide(budget, self.pool_states(group), self._policy,
                          allowed_pools=allowed_pools, forced_pool=forced,
                          floor_tokens=estimate.budget.refusal_floor_tokens)
        self.metrics.decision_seconds.observe(self._clock() - started)
        if decision.pool is None:
            self.metrics.refusals.labels(group.model_group, decision.reason.value).inc()
            error = PoolNotAllowedError if decision.reason is Reason.NOT_ALLOWED else NoPoolFitsError
            raise error(model_group=group.model_group, budget_tokens=budget,
                        largest_limit_tokens=decision.limit_tokens)
        preferred = decision.pool
        if decision.reason is Reason.SPILLOVER:
            preferred = self._preferred_without_load(budget, group, allowed_pools)
        return {
            "id": self._id_prefix + str(next(self._ids)), "group": group.model_group,
            "category": estimate.key.category,
            "budget": budget, "prompt": estimate.budget.prompt_tokens,
            "point": estimate.budget.prompt_tokens_point, "output": estimate.budget.output_tokens,
            "shape": _shape_to_list(estimate.shape), "pool": decision.pool,
            "reason": decision.reason.value, "preferred": preferred,
            "allowed": sorted(allowed_pools) if allowed_pools is not None else None,
            "tenant": policy.tenant, "trust": policy.observation_trust.value,
            "recovered_from": None, "learned": False,
        }

    def _preferred_without_load(self, budget: int, group: GroupSpec,
                                allowed_pools: frozenset[str] | None) -> str:
        states = [PoolState(p.name, p.max_model_len) for p in group.pools]
        return decide(budget, states, self._policy, allowed_pools=allowed_pools).pool or ""

    # -- filtering -------------------------------------------------------------------------
    def choose(self, model: str, healthy: Sequence[dict[str, Any]], stash: dict[str, Any],
               failed_ids: frozenset[str] = frozenset(),
               last_failure: str | None = None) -> list[dict[str, Any]]:
        """The deployments of the planned pool (on a recovery hop: of the next larger pool).

        `failed_ids`: deployments that already failed this request (a retry). They are avoided
        while another deployment of the pool, or a larger pool that fits, is left: a short
        request whose whole pool is down is served by the long pool on its first retry, before
        LiteLLM's cooldown notices. When nothing else is left they are retried as LiteLLM would.
        `last_failure`: the error text of the attempt that failed last (LiteLLM's breadcrumb),
        which a recovery hop must show to be a context-length rejection.
        """
        group = self.groups[stash["group"]]
        allowed = frozenset(stash["allowed"]) if stash.get("allowed") is not None else None
        if model in self.recovery_groups:
            # The pool that rejected the request: on LiteLLM's retry of the recovery hop the
            # plan already names the recovery pool, which must be tried again, not skipped
            # (and the retry's breadcrumb is the recovery pool's own failure, not a rejection).
            failed = stash.get("recovered_from")
            if failed is None:
                self.check_recoverable(group, stash, last_failure)
                failed = stash["pool"]
            decision = decide_recovery(stash["budget"], self.pool_states(group), failed,
                                       allowed_pools=allowed)
            if decision.pool is None:
                # a 400 that says so; an empty list would end in LiteLLM's 429 "no deployments"
                self.metrics.refusals.labels(group.model_group, decision.reason.value).inc()
                raise NoPoolFitsError(
                    model_group=group.model_group, budget_tokens=stash["budget"],
                    largest_limit_tokens=decision.limit_tokens,
                    message=f"litellm-dualpool: pool {failed!r} of model group {group.model_group!r} "
                            "rejected the request for its context length (see the backend's error) "
                            "and no larger pool exists (that this caller may use). Shorten the prompt or "
                            "lower max_tokens.")
            stash.update(pool=decision.pool, reason=Reason.RECOVERY.value, recovered_from=failed)
        chosen: list[dict[str, Any]] = []
        if failed_ids:
            chosen = self._in_pool(group, stash, [
                d for d in healthy if (d.get("model_info") or {}).get("id") not in failed_ids],
                allowed)
        if not chosen:
            chosen = self._in_pool(group, stash, healthy, allowed)
        if chosen:
            self.inflight.open(stash["id"], group.model_group, stash["pool"])
            self._set_in_flight_gauge(group.model_group, stash["pool"])
            self._count_placement(group, stash, retry=bool(failed_ids))
        return chosen or []

    def check_recoverable(self, group: GroupSpec, stash: Mapping[str, Any],
                          last_failure: str | None) -> None:
        """RecoveryRefusedError unless the failed attempt can have been a context-length
        rejection. LiteLLM sends a request to the recovery group for any error whose text holds
        a context-length phrase, a client's own text quoted in a validation error included. Two
        checks, neither waiting for the failure event (which may run before or after this hop):
        the failure LiteLLM recorded for the hop must be the backend's own rejection; and the
        request must be able to overflow the failed pool at all (`_fits_surely`)."""
        failed = group.pool(stash["pool"])
        if last_failure is not None and parse_context_rejection(last_failure) is None:
            why = "its error is not the backend's own context-length rejection"
        else:
            bound = self._fits_surely(stash, failed)
            if bound is None:
                return
            why = (f"the request (at most {bound} tokens with its output) cannot exceed that "
                   f"pool's {failed.max_model_len if failed else 0}")
        logger.info("litellm-dualpool: request %s not recovered: %s", stash.get("id"), why)
        raise RecoveryRefusedError(
            model_group=group.model_group, pool=str(stash["pool"]), budget_tokens=stash["budget"],
            largest_limit_tokens=failed.max_model_len if failed else group.largest.max_model_len,
            why=why)

    @staticmethod
    def _fits_surely(stash: Mapping[str, Any], pool: PoolSpec | None) -> int | None:
        """The request's hard upper bound of tokens (prompt bound + output budget) when it fits
        `pool`'s window, so that no rejection by that pool can be for its length; else None."""
        upper = prompt_tokens_upper_bound(_shape_from_list(stash["shape"]))
        if upper is None or pool is None:
            return None
        bound = upper + int(stash["output"])
        return bound if bound <= pool.max_model_len else None

    def _count_placement(self, group: GroupSpec, stash: dict[str, Any], *, retry: bool) -> None:
        """One routing decision per placement: a retry in the pool already chosen (LiteLLM's
        num_retries after a timeout or a 5xx) is counted as a retry, not as another decision,
        so `dualpool_requests_total` sums to the requests routed. A new hop (misroute
        recovery, failover to another pool) is a new decision."""
        placement = [stash["pool"], stash["reason"]]
        if stash.get("placed") == placement or (retry and stash.get("placed") is None):
            self.metrics.retries.labels(group.model_group, stash["pool"]).inc()
            return
        stash["placed"] = placement
        self.metrics.requests.labels(group.model_group, stash["pool"], stash["reason"]).inc()
        if stash["reason"] == Reason.SPILLOVER.value:
            self.metrics.spillovers.labels(group.model_group, stash["preferred"],
                                           stash["pool"]).inc()

    def _in_pool(self, group: GroupSpec, stash: dict[str, Any],
                 healthy: Sequence[dict[str, Any]],
                 allowed: frozenset[str] | None) -> list[dict[str, Any]]:
        by_pool: dict[str, list[dict[str, Any]]] = {}
        for deployment in healthy:
            pool = self.pool_of(group, deployment)
            if pool is not None:
                by_pool.setdefault(pool.name, []).append(deployment)
        chosen = by_pool.get(stash["pool"])
        return chosen or self._available_elsewhere(group, stash, by_pool, allowed)

    def _available_elsewhere(self, group: GroupSpec, stash: dict[str, Any],
                             by_pool: Mapping[str, list[dict[str, Any]]],
                             allowed: frozenset[str] | None) -> list[dict[str, Any]]:
        """The planned pool has no healthy deployment: the smallest other pool that fits and has
        one (a larger pool is always safe; a smaller one only when the budget fits it)."""
        for pool in group.pools:
            if (pool.name != stash["pool"] and by_pool.get(pool.name)
                    and stash["budget"] <= pool.max_model_len
                    and (allowed is None or pool.name in allowed)):
                stash.update(preferred=stash["pool"], pool=pool.name,
                             reason=Reason.SPILLOVER.value)
                return list(by_pool[pool.name])
        return []

    # -- end of an attempt -----------------------------------------------------------------
    def _close(self, stash: Mapping[str, Any], model_info: Mapping[str, Any] | None) -> None:
        group = self.groups.get(stash.get("group", ""))
        if group is None:
            return
        pool = self.pool_of(group, {"model_info": model_info or {}})
        deployment_id = (model_info or {}).get("id")
        self.inflight.close(stash["id"], pool=pool.name if pool else None,
                            deployment_id=deployment_id if isinstance(deployment_id, str) else None)
        for p in group.pools:
            self._set_in_flight_gauge(group.model_group, p.name)

    def close_request(self, stash: Mapping[str, Any]) -> None:
        """The request is over: close every attempt still open."""
        self.inflight.close_all(stash["id"])
        group = self.groups.get(stash.get("group", ""))
        for p in group.pools if group is not None else ():
            self._set_in_flight_gauge(group.model_group, p.name)

    def _set_in_flight_gauge(self, group: str, pool: str) -> None:
        self.metrics.in_flight.labels(group, pool).set(self.inflight.pool(group, pool))

    def on_success(self, stash: dict[str, Any], model_info: Mapping[str, Any] | None,
                   backend_prompt_tokens: int | None) -> None:
        """An attempt succeeded; `backend_prompt_tokens` is None unless the backend reported it."""
        self._close(stash, model_info)
        recovered_from = stash.get("recovered_from")
        if recovered_from and not stash.get("recovery_counted"):
            stash["recovery_counted"] = True
            self.metrics.misroutes_recovered.labels(stash["group"], recovered_from,
                                                    stash["pool"]).inc()
        if backend_prompt_tokens is not None:
            self.learn(stash, backend_prompt_tokens)
        elif not stash.get("stream"):
            self.metrics.learning.labels(stash["group"], "no_backend_usage").inc()

    def on_failure(self, stash: dict[str, Any], model_info: Mapping[str, Any] | None,
                   error: BaseException | None) -> None:
        self._close(stash, model_info)
        rejection = parse_context_rejection(error)
        if rejection is None:
            return
        group = self.groups[stash["group"]]
        pool = self.pool_of(group, {"model_info": model_info or {}})
        if self._fits_surely(stash, pool) is not None:
            logger.info("litellm-dualpool: request %s: pool %s claims a context-length rejection "
                        "of a request too small to overflow it; ignored", stash.get("id"),
                        pool.name if pool else None)
            return
        if pool is None or pool.max_model_len < group.largest.max_model_len:
            self.metrics.misroutes.labels(group.model_group, pool.name if pool else stash["pool"]).inc()
        # else the largest pool refused it: no pool could serve it, which the recovery hop
        # reports as a refusal (a request sent there as borderline, not a routing error)
        # A lower bound ("at least N", current vLLM) is not a sample: the recovered call's
        # usage teaches the exact count instead. Nor is a count this request cannot produce.
        if rejection.prompt_tokens is not None and rejection.prompt_tokens_exact:
            if prompt_tokens_plausible(_shape_from_list(stash["shape"]), rejection.prompt_tokens,
                                       self.calibrator.settings.max_bytes_per_token):
                self.learn(stash, rejection.prompt_tokens)
            else:
                self.metrics.learning.labels(group.model_group, Outcome.REJECTED.value).inc()

    def recovery_failed(self, stash: dict[str, Any], *, context_rejected: bool) -> None:
        """The recovery hop failed for good: what the client is told is "fits nowhere" (a 400)
        only when the larger pool rejected the request for its length too; else that the larger
        pool failed (a 5xx), since the request may well fit it."""
        if stash.get("recovered_from"):
            stash["recovery_failure"] = "context" if context_rejected else "error"

    def learn(self, stash: dict[str, Any], prompt_tokens: int) -> bool:
        """Learn once per request from the backend's prompt token count.

        A count that is not an integer in [1, MAX_PROMPT_TOKENS] (a broken or hostile backend)
        is counted as ``invalid_usage`` and goes nowhere: it is neither learned nor shared
        with the other workers, whose calibrators would otherwise all see it."""
        if stash.get("learned"):
            return False
        group = stash["group"]
        if type(prompt_tokens) is not int or not 0 < prompt_tokens <= MAX_PROMPT_TOKENS:
            self.metrics.learning.labels(group, "invalid_usage").inc()
            return False
        stash["learned"] = True
        key, shape = CategoryKey(group, stash["category"]), _shape_from_list(stash["shape"])
        point = stash.get("point") or stash["prompt"]
        label = self.calibrator.stored_key(key, shape).category  # bounded
        self.metrics.estimate_error.labels(group, label).observe(
            (point - prompt_tokens) / prompt_tokens)
        # The store learns (at once, or once shared) and counts the outcome and the ratio.
        outcome = self.store.observe(
            key, shape, prompt_tokens,
            tenant=stash.get("tenant") or ANONYMOUS_TENANT,
            trust=ObservationTrust(stash.get("trust") or ObservationTrust.TRUSTED))
        return outcome is Outcome.LEARNED

