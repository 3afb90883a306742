"""The plugin's routing brain, free of LiteLLM types: LiteLLM's deployments become pool
snapshots, the core plans (`core.plan.plan_request`, the entry the simulator shares), and the
engine counts metrics, tracks in-flight attempts and learns when an attempt ends.

Per request the plan travels in the request's metadata as a `PlanRecord` (proxy/record.py),
which LiteLLM carries from the proxy's pre-call hook through every routing attempt (fallback
hops included) to the success and failure events.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from litellm_dualpool.config import GroupSpec, PluginConfig, PoolSpec
from litellm_dualpool.core.affinity import (
    PINNING_REASONS,
    AffinityTable,
    conversation_key,
    hold,
    is_continuation,
)
from litellm_dualpool.core.calibration import MAX_PROMPT_TOKENS, Calibrator
from litellm_dualpool.core.estimator import Estimator, learning_shape
from litellm_dualpool.core.learning import LearnReason, learn_reason, near_limit
from litellm_dualpool.core.plan import (
    Plan,
    Progress,
    RecoveryFailure,
    plan_counted,
    plan_recovery,
    plan_request,
)
from litellm_dualpool.core.policy import PoolState, Reason, failover_pool
from litellm_dualpool.core.shape import prompt_tokens_plausible, prompt_tokens_upper_bound
from litellm_dualpool.errors import NoPoolFitsError, RecoveryRefusedError
from litellm_dualpool.limits import deployment_key
from litellm_dualpool.metrics import DualPoolMetrics, init_group_series
from litellm_dualpool.proxy.inflight import InFlight
from litellm_dualpool.proxy.policy import TenantPolicy
from litellm_dualpool.proxy.record import STASH_KEY, PlanRecord
from litellm_dualpool.proxy.rejections import parse_context_rejection
from litellm_dualpool.state import Outcome, StateConfig, StateStore, build_store

logger = logging.getLogger("litellm_dualpool")

__all__ = ["STASH_KEY", "DualPoolEngine", "LoadSource", "PlanRecord"]

#: Distinct (group, allowed pools) combinations remembered before the cache starts again.
_MAX_ALLOWED_CACHE = 1024
#: Optional extra load signal: (model group, pool) -> load fraction, or None when unknown.
LoadSource = Callable[[str, PoolSpec], float | None]


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
        #: Conversation -> larger pool (core/affinity.py); None when affinity is off.
        self.affinity = (AffinityTable(self.settings.affinity.to_core())
                         if self.settings.affinity.enabled else None)
        self._learning = self.settings.learning.to_core()
        #: Ordinary requests of settled keys seen per model group (the 1-in-N learning sample).
        self._ordinary = {name: itertools.count() for name in self.groups}
        self._index_pools()
        for name in self.groups:
            init_group_series(self.metrics, name)
        #: max_model_len read from the backend, by LiteLLM's deployment id (model_info.id), for
        #: deployments without model_info.max_model_len (`learn_deployment_ids`).
        self._limit_by_id: dict[str, int] = {}

    # -- limits read from the backends -------------------------------------------------------
    def update_config(self, config: PluginConfig) -> None:
        """Pools rebuilt after more limits were read from the backends (same groups)."""
        self.config, self.groups = config, config.groups
        self._index_pools()

    def learn_deployment_ids(self, deployments: Iterable[Mapping[str, Any]]) -> None:
        """Map the router's deployments (recovery copies included) without a configured
        max_model_len to the limit their backend reported, by LiteLLM's id; a deployment left
        unmapped takes no traffic (`pool_of` is None)."""
        limits = self.config.discovered_limits
        for deployment in deployments:
            info = deployment.get("model_info") or {}
            length = limits.get(deployment_key(deployment.get("litellm_params")) or ("", ""))
            if isinstance(info.get("id"), str) and length is not None:
                self._limit_by_id[info["id"]] = length

    def _index_pools(self) -> None:
        """Per-group views of the pools, rebuilt when discovery changes them."""
        #: each group's pool limits, ascending (what the estimate's tiers are judged against)
        self._limits = {name: tuple(p.max_model_len for p in g.pools)
                        for name, g in self.groups.items()}
        self._pool_names = {name: [p.name for p in g.pools] for name, g in self.groups.items()}
        #: (group, allowed pools, allow long pool) -> the caller's allowed subset; bounded
        self._allowed: dict[tuple[str, frozenset[str] | None, bool], frozenset[str] | None] = {}

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
        """The pool of a deployment: its ``model_info.pool`` label, else its max_model_len
        (configured, else read from its backend); None while its limit is unknown."""
        info = (deployment or {}).get("model_info") or {}
        length = info.get("max_model_len")
        if length is None:
            length = self._limit_by_id.get(info.get("id"))  # type: ignore[arg-type]  # any JSON value; a miss is None
            if length is None:
                return None
        label = info.get("pool")
        if isinstance(label, str):
            pool = group.pool(label)
            if pool is not None:
                return pool
        return group.pool_for_len(length)

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
             metadata: Mapping[str, Any] | None = None, embedding: bool = False,
             stream: bool = False, session_id: str | None = None) -> PlanRecord:
        """Estimate and decide; the record to keep in the request's metadata.
        `session_id`: the caller's conversation id (LiteLLM's ``metadata.session_id``).

        Raises NoPoolFitsError / PoolNotAllowedError (-> 400) and InvalidRequestError."""
        started = self._clock()
        forced, category = self.overrides(metadata, policy, group)
        estimate = self.estimator.estimate(
            body, group.model_group, category=policy.category or category,
            default_output_tokens=policy.default_output_tokens, embedding=embedding,
            limits=self._limits.get(group.model_group),
            headroom_fraction=self._policy.headroom_fraction)
        pools = self.pool_states(group)
        self.metrics.decisions_by_tier.labels(group.model_group, estimate.tier.value).inc()
        plan = plan_request(
            estimate, pools, self._policy,
            plan_id=self._id_prefix + str(next(self._ids)),
            allowed_pools=self._allowed_pools(policy, group), forced_pool=forced,
            tenant=policy.tenant, trust=policy.observation_trust)
        conversation = None
        if self.affinity is not None and plan.decision.pool is not None:
            plan, conversation = self._hold_conversation(self.affinity, plan, group, pools, body,
                                                         session_id)
        self.metrics.decision_seconds.observe(self._clock() - started)
        refusal = plan.refusal()
        if refusal is not None:
            self.metrics.refusals.labels(group.model_group, plan.decision.reason.value).inc()
            raise refusal
        record = PlanRecord(plan, Progress.start(plan, stream=stream),
                            expose_budget=policy.expose_budget_header, draft=estimate.draft)
        if self.affinity is not None:
            record.conversation, record.session_id = conversation, session_id
            record.messages = body.get("messages")
        return record

    def arbitrated(self, record: PlanRecord, prompt_tokens: int) -> PlanRecord:
        """The record of an AMBIGUOUS request once the backend's tokenizer has counted it: the
        count decides (`core.plan.plan_counted`) and is learned from once, like a usage
        report (the caller's trust applies; the request's own usage is then not learned again).
        A count this request cannot produce is rejected and the estimate's record kept.

        Raises NoPoolFitsError when the exact count fits no pool (a certain refusal)."""
        plan = record.plan
        if not prompt_tokens_plausible(plan.shape, prompt_tokens,
                                       self.calibrator.settings.max_bytes_per_token):
            self.metrics.learning.labels(plan.group, Outcome.REJECTED.value).inc()
            return record
        group = self.groups[plan.group]
        counted = plan_counted(plan, prompt_tokens, self.pool_states(group), self._policy)
        self.learn(record, prompt_tokens, always=True)
        refusal = counted.refusal()
        if refusal is not None:
            self.metrics.refusals.labels(group.model_group, counted.decision.reason.value).inc()
            raise refusal
        progress = Progress.start(counted, stream=record.progress.stream)
        progress.learned = True
        arbitrated = PlanRecord(counted, progress, expose_budget=record.expose_budget,
                                draft=record.draft)
        arbitrated.session_id, arbitrated.messages = record.session_id, record.messages
        pinned = (self._pin_placed(counted, group, record.session_id, record.messages)
                  if self.affinity is not None else None)
        # (a key of 0 is a key: not `or`)
        arbitrated.conversation = pinned if pinned is not None else record.conversation
        return arbitrated

    def pin_estimated(self, record: PlanRecord) -> None:
        """Pin the conversation of an AMBIGUOUS plan that got no exact count (arbitration off,
        failed or not for this call type): the estimate's pool stands, so it pins as a plan
        placed by fit does."""
        if self.affinity is not None and record.conversation is None:
            record.conversation = self._pin_placed(record.plan, self.groups[record.plan.group],
                                                   record.session_id, record.messages)

    def _allowed_pools(self, policy: TenantPolicy, group: GroupSpec) -> frozenset[str] | None:
        """`policy.pools_for` of the group's pools, remembered (it builds two sets per call)."""
        key = (group.model_group, policy.allowed_pools, policy.allow_long_pool)
        try:
            return self._allowed[key]
        except KeyError:
            if len(self._allowed) >= _MAX_ALLOWED_CACHE:
                self._allowed.clear()
            found = self._allowed[key] = policy.pools_for(self._pool_names[group.model_group])
            return found

    # -- conversation affinity ---------------------------------------------------------------
    def _hold_conversation(self, table: AffinityTable, plan: Plan, group: GroupSpec,
                           pools: Sequence[PoolState], body: Mapping[str, Any],
                           session_id: str | None) -> tuple[Plan, int | None]:
        """Conversation affinity (core/affinity.py): hold a continuation turn (or a request with
        a session id) in its conversation's larger pool; pin a conversation placed by fit in a
        pool larger than the smallest. Keys are hashed only when one of them applies; the one
        returned is the pin's (what the next turn looks up, and a recovery pins)."""
        now, name, key = self._clock(), group.model_group, None
        messages = body.get("messages")
        upward = plan.decision.limit_tokens < group.largest.max_model_len  # else nothing to hold
        # an empty table holds nothing: skip hashing the key (~8 us at 32 KB), as when the
        # plan already chose the largest pool
        if upward and len(table) and (session_id or is_continuation(messages)):
            found = conversation_key(plan.tenant, name, session_id, messages, previous=True)
            if found is not None:
                pinned, expired = table.lookup(found, now)
                if expired is not None:
                    self.metrics.affinity.labels(name, expired.value).inc()
                decision, outcome = hold(
                    plan.decision, pinned, pools, allowed_pools=plan.allowed_pools,
                    spillover_load_fraction=self._policy.spillover_load_fraction)
                if outcome is not None:
                    self.metrics.affinity.labels(name, outcome.value).inc()
                if decision is not plan.decision:  # (dataclasses.replace: ~5 us more)
                    # held above the band: nothing left to arbitrate
                    plan = Plan(plan.id, plan.group, plan.category, plan.budget, plan.shape,
                                decision, plan.preferred, plan.allowed_pools, plan.tenant,
                                plan.trust, plan.tier, plan.count, None)
        if plan.arbiter_pool is None:  # else the exact count decides, and pins (`arbitrated`)
            key = self._pin_placed(plan, group, session_id, messages)
        return plan, key

    def _pin_placed(self, plan: Plan, group: GroupSpec, session_id: str | None,
                    messages: Any) -> int | None:
        """Pin the conversation of a plan placed by fit in a pool larger than the smallest;
        its key, or None when nothing was pinned."""
        decision, name = plan.decision, group.model_group
        if (decision.pool is None or decision.reason not in PINNING_REASONS
                or decision.limit_tokens <= group.pools[0].max_model_len):
            return None
        key = conversation_key(plan.tenant, name, session_id, messages)
        if key is not None:
            self._pin(name, key, decision.pool, decision.limit_tokens)
        return key

    def _pin(self, group: str, key: int, pool: str, limit_tokens: int) -> None:
        if self.affinity is not None:
            for outcome in self.affinity.pin(key, pool, limit_tokens, self._clock()):
                self.metrics.affinity.labels(group, outcome.value).inc()

    # -- filtering -------------------------------------------------------------------------
    def choose(self, model: str, healthy: Sequence[dict[str, Any]], record: PlanRecord,
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
        plan, progress = record.plan, record.progress
        group = self.groups[plan.group]
        if model in self.recovery_groups:
            self._recover(group, record, last_failure)
        chosen: list[dict[str, Any]] = []
        if failed_ids:
            chosen = self._in_pool(group, plan, progress, [
                d for d in healthy if (d.get("model_info") or {}).get("id") not in failed_ids])
        if not chosen:
            chosen = self._in_pool(group, plan, progress, healthy)
        if chosen:
            self.inflight.open(plan.id, group.model_group, progress.pool)
            self._set_in_flight_gauge(group.model_group, progress.pool)
            self._count_placement(group, progress, retry=bool(failed_ids))
        return chosen

    def _recover(self, group: GroupSpec, record: PlanRecord, last_failure: str | None) -> None:
        """A recovery hop: the next larger pool (a retry of the hop stays in the pool the first
        one chose), or the plugin's 400 when none exists (an empty list would end in
        LiteLLM's 429 "no deployments")."""
        plan, progress = record.plan, record.progress
        if progress.recovered_from is None:  # the first hop: was it a real rejection?
            self.check_recoverable(group, record, last_failure)
        decision = plan_recovery(plan, progress, self.pool_states(group))
        failed = progress.rejected_by
        if decision.pool is None:
            self.metrics.refusals.labels(group.model_group, decision.reason.value).inc()
            failed_spec = group.pool(failed)
            record.refusal = NoPoolFitsError(
                model_group=group.model_group, budget_tokens=plan.total_tokens,
                largest_limit_tokens=(failed_spec.max_model_len if failed_spec is not None
                                      else decision.limit_tokens),
                message=f"litellm-dualpool: pool {failed!r} of model group {group.model_group!r} "
                        "rejected the request for its context length (see the backend's error) "
                        "and no larger pool exists (that this caller may use). Shorten the prompt or "
                        "lower max_tokens.")
            raise record.refusal
        progress.pool, progress.reason, progress.recovered_from = (
            decision.pool, Reason.RECOVERY, failed)
        self._pin_recovered(record, group, decision.pool, decision.limit_tokens)

    def _pin_recovered(self, record: PlanRecord, group: GroupSpec, pool: str,
                       limit_tokens: int) -> None:
        """A conversation that outgrew its pool (a recovery) is pinned to the larger one."""
        if self.affinity is None:
            return
        if record.conversation is None:
            record.conversation = conversation_key(record.plan.tenant, group.model_group,
                                                   record.session_id, record.messages)
        if record.conversation is not None:
            self._pin(group.model_group, record.conversation, pool, limit_tokens)

    def check_recoverable(self, group: GroupSpec, record: PlanRecord,
                          last_failure: str | None) -> None:
        """RecoveryRefusedError unless the failed attempt can have been a context-length
        rejection. LiteLLM sends a request to the recovery group for any error whose text holds
        a context-length phrase, a client's own text quoted in a validation error included. Two
        checks, neither waiting for the failure event (which may run before or after this hop):
        the failure LiteLLM recorded for the hop must be the backend's own rejection; and the
        request must be able to overflow the failed pool at all (`_fits_surely`)."""
        plan, pool_name = record.plan, record.progress.pool
        failed = group.pool(pool_name)
        if last_failure is not None and parse_context_rejection(last_failure) is None:
            why = "its error is not the backend's own context-length rejection"
        else:
            bound = self._fits_surely(plan, failed)
            if bound is None:
                return
            why = (f"the request (at most {bound} tokens with its output) cannot exceed that "
                   f"pool's {failed.max_model_len if failed else 0}")
        logger.info("litellm-dualpool: request %s not recovered: %s", plan.id, why)
        raise RecoveryRefusedError(
            model_group=group.model_group, pool=pool_name, budget_tokens=plan.total_tokens,
            largest_limit_tokens=failed.max_model_len if failed else group.largest.max_model_len,
            why=why)

    @staticmethod
    def _fits_surely(plan: Plan, pool: PoolSpec | None) -> int | None:
        """The request's hard upper bound of tokens (prompt bound + output budget) when it fits
        `pool`'s window, so that no rejection by that pool can be for its length; else None."""
        upper = prompt_tokens_upper_bound(plan.shape)
        if upper is None or pool is None:
            return None
        bound = upper + plan.budget.output_tokens
        return bound if bound <= pool.max_model_len else None

    def _count_placement(self, group: GroupSpec, progress: Progress, *, retry: bool) -> None:
        """Count a placement so that ``sum(dualpool_requests_total)`` is the requests routed:
        a request is counted there once, at its first decision (pool and reason); every later
        placement is a hop with its own counter. A retry in the pool already chosen (LiteLLM's
        num_retries after a timeout or a 5xx) is ``dualpool_retries_total``; a move to another
        pool because the chosen one has no healthy deployment left is
        ``dualpool_failovers_total``; the misroute-recovery hop is counted by
        ``dualpool_misroutes_recovered_total`` when it is served."""
        placement = (progress.pool, progress.reason)
        if progress.placed == placement or (retry and progress.placed is None):
            self.metrics.retries.labels(group.model_group, progress.pool).inc()
            return
        previous, progress.placed = progress.placed, placement
        if previous is None:
            self.metrics.requests.labels(group.model_group, progress.pool,
                                         progress.reason.value).inc()
            if progress.reason is Reason.SPILLOVER:
                self.metrics.spillovers.labels(group.model_group, progress.preferred,
                                               progress.pool).inc()
        elif progress.reason is not Reason.RECOVERY and previous[0] != progress.pool:
            self.metrics.failovers.labels(group.model_group, previous[0], progress.pool).inc()
        elif progress.reason is not Reason.RECOVERY:  # same pool, another reason: still a retry
            self.metrics.retries.labels(group.model_group, progress.pool).inc()

    def _in_pool(self, group: GroupSpec, plan: Plan, progress: Progress,
                 healthy: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The healthy deployments of the current pool; when it has none, of the pool the
        core's failover rule names (the placement then moves there, as a spillover)."""
        by_pool: dict[str, list[dict[str, Any]]] = {}
        for deployment in healthy:
            pool = self.pool_of(group, deployment)
            if pool is not None:
                by_pool.setdefault(pool.name, []).append(deployment)
        chosen = by_pool.get(progress.pool)
        if chosen:
            return chosen
        other = failover_pool(plan.total_tokens, progress.pool, self.pool_states(group),
                              [name for name, found in by_pool.items() if found],
                              allowed_pools=plan.allowed_pools)
        if other is None:
            return []
        progress.preferred, progress.pool, progress.reason = progress.pool, other, Reason.SPILLOVER
        return list(by_pool[other])

    # -- end of an attempt -----------------------------------------------------------------
    def _close(self, plan: Plan, model_info: Mapping[str, Any] | None) -> None:
        group = self.groups.get(plan.group)
        if group is None:
            return
        pool = self.pool_of(group, {"model_info": model_info or {}})
        deployment_id = (model_info or {}).get("id")
        closed = self.inflight.close(
            plan.id, pool=pool.name if pool else None,
            deployment_id=deployment_id if isinstance(deployment_id, str) else None)
        if closed is not None:  # only that pool's count changed
            self._set_in_flight_gauge(group.model_group, closed)

    def close_request(self, record: PlanRecord) -> None:
        """The request is over: close every attempt still open."""
        self.inflight.close_all(record.plan.id)
        group = self.groups.get(record.plan.group)
        if group is None:
            return
        for p in group.pools:
            self._set_in_flight_gauge(group.model_group, p.name)

    def _set_in_flight_gauge(self, group: str, pool: str) -> None:
        self.metrics.in_flight.labels(group, pool).set(self.inflight.pool(group, pool))

    def on_success(self, record: PlanRecord, model_info: Mapping[str, Any] | None,
                   backend_prompt_tokens: int | None) -> None:
        """An attempt succeeded; `backend_prompt_tokens` is None unless the backend reported it."""
        plan, progress = record.plan, record.progress
        self._close(plan, model_info)
        if progress.recovered_from and not progress.recovery_counted:
            progress.recovery_counted = True
            self.metrics.misroutes_recovered.labels(plan.group, progress.recovered_from,
                                                    progress.pool).inc()
        if backend_prompt_tokens is not None:
            self.learn(record, backend_prompt_tokens)
        elif not progress.stream:
            self.metrics.learning.labels(plan.group, "no_backend_usage").inc()

    def on_failure(self, record: PlanRecord, model_info: Mapping[str, Any] | None,
                   error: BaseException | None) -> None:
        plan = record.plan
        self._close(plan, model_info)
        rejection = parse_context_rejection(error)
        if rejection is None:
            return
        group = self.groups[plan.group]
        pool = self.pool_of(group, {"model_info": model_info or {}})
        if self._fits_surely(plan, pool) is not None:
            logger.info("litellm-dualpool: request %s: pool %s claims a context-length rejection "
                        "of a request too small to overflow it; ignored", plan.id,
                        pool.name if pool else None)
            return
        if pool is None or pool.max_model_len < group.largest.max_model_len:
            self.metrics.misroutes.labels(group.model_group,
                                          pool.name if pool else record.progress.pool).inc()
        # else the largest pool refused it: no pool could serve it, which the recovery hop
        # reports as a refusal (a request sent there as borderline, not a routing error)
        # A lower bound ("at least N", current vLLM) is not a sample: the recovered call's
        # usage teaches the exact count instead. Nor is a count this request cannot produce.
        if rejection.prompt_tokens is not None and rejection.prompt_tokens_exact:
            if prompt_tokens_plausible(plan.shape, rejection.prompt_tokens,
                                       self.calibrator.settings.max_bytes_per_token):
                self.learn(record, rejection.prompt_tokens, always=True)
            else:
                self.metrics.learning.labels(group.model_group, Outcome.REJECTED.value).inc()

    def recovery_failed(self, record: PlanRecord, *, context_rejected: bool) -> None:
        """The recovery hop failed for good: what the client is told is "fits nowhere" (a 400)
        only when the larger pool rejected the request for its length too; else that the larger
        pool failed (a 5xx), since the request may well fit it."""
        progress = record.progress
        if progress.recovered_from:
            progress.recovery_failure = (RecoveryFailure.CONTEXT if context_rejected
                                         else RecoveryFailure.ERROR)

    def learn(self, record: PlanRecord, prompt_tokens: int, *, always: bool = False) -> bool:
        """Learn once per request from the backend's prompt token count.

        `always`: an exact count that must be learned whatever the sample (a backend's
        rejection naming the count; a count asked of the backend's tokenizer). A recovered
        request is always learned too; an ordinary one of a settled key only when the learning
        sample takes it (core/learning.py), else it counts as ``skipped``.
        A count that is not an integer in [1, MAX_PROMPT_TOKENS] (a broken or hostile backend)
        is counted as ``invalid_usage`` and goes nowhere: it is neither learned nor shared
        with the other workers, whose calibrators would otherwise all see it."""
        plan, progress = record.plan, record.progress
        if progress.learned:
            return False
        if type(prompt_tokens) is not int or not 0 < prompt_tokens <= MAX_PROMPT_TOKENS:
            self.metrics.learning.labels(plan.group, "invalid_usage").inc()
            return False
        progress.learned = True
        if self._learning.sample_every > 1 and self.learn_reason(
                record, always=always) is LearnReason.SKIPPED:
            self.metrics.learning.labels(plan.group, LearnReason.SKIPPED.value).inc()
            return False
        point = plan.budget.prompt_tokens_point or plan.budget.prompt_tokens
        shape, key = learning_shape(plan.shape, plan.key, record.draft)
        label = self.calibrator.stored_key(key, shape).category  # bounded
        self.metrics.estimate_error.labels(plan.group, label).observe(
            (point - prompt_tokens) / prompt_tokens)
        # The store learns (at once, or once shared) and counts the outcome and the ratio.
        outcome = self.store.observe(key, shape, prompt_tokens, tenant=plan.tenant,
                                     trust=plan.trust)
        return outcome is Outcome.LEARNED

    def learn_reason(self, record: PlanRecord, *, always: bool = False) -> LearnReason:
        """Whether this request's count is learned (core/learning.py): the settled check and
        the sample's counter are only consulted for ordinary requests."""
        plan, settings = record.plan, self._learning
        always = always or record.progress.recovered_from is not None
        near = not always and near_limit(plan.budget, self._limits.get(plan.group, ()),
                                         settings.near_limit_fraction)
        settled = not (always or near) and self.calibrator.settled(
            plan.key, settings.settled_samples, settings.settled_max_spread)
        ordinal = next(self._ordinary[plan.group]) if settled else 0
        return learn_reason(settings, settled=settled, near=near, always=always, ordinal=ordinal)
