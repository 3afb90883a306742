"""Every Prometheus metric of the plugin, built against an injected registry.

The default is prometheus_client's global registry, which the LiteLLM proxy serves on
``/metrics`` (with its ``prometheus`` callback), so these appear beside ``litellm_*``. Labels are
bounded: model group and pool come from the YAML, reasons and outcomes are enums, categories are
capped by the calibrator's key limit. No prompt text ever reaches a label.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram

#: Decision latency buckets: the dispatch is microseconds; a millisecond is already a problem.
DECISION_BUCKETS_SECONDS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2)
#: Relative error of the point estimate, (estimated - reported) / reported.
#: Arbitration latency buckets: a /tokenize call takes ~1-30 ms; 100 ms is the default timeout.
ARBITRATION_BUCKETS_SECONDS = (5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
#: Outcomes of an arbitration (`dualpool_arbitrations_total`), every series initialised.
ARBITRATION_OUTCOMES = ("exact", "timeout", "error", "unsupported", "skipped_busy",
                        "no_deployment")
#: Tiers of a decision (`core.policy.Tier`).
DECISION_TIERS = ("far", "near", "ambiguous")
ERROR_BUCKETS_RATIO = (-0.5, -0.2, -0.1, -0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


class _CachedLabels:
    """``labels(*values)`` that keeps the children it hands out: prometheus_client validates,
    stringifies and takes a lock on every call (~1.5 us), and the plugin asks for the same few
    children on every request. Bounded like the labels themselves."""

    _dualpool_children: dict[tuple[Any, ...], Any]

    def labels(self, *values: Any, **named: Any) -> Any:
        if named:
            return super().labels(*values, **named)  # type: ignore[misc]  # prometheus_client's labels() is untyped
        try:
            return self._dualpool_children[values]
        except AttributeError:
            self._dualpool_children = {}
        except KeyError:
            pass
        child = self._dualpool_children[values] = super().labels(*values)  # type: ignore[misc]  # prometheus_client's labels() is untyped
        return child

    def remove(self, *values: Any) -> None:
        self._dualpool_children = {}
        super().remove(*values)  # type: ignore[misc]  # untyped in prometheus_client

    def clear(self) -> None:
        self._dualpool_children = {}
        super().clear()  # type: ignore[misc]  # untyped in prometheus_client


class Counter(_CachedLabels, _Counter):
    pass


class Gauge(_CachedLabels, _Gauge):
    pass


class Histogram(_CachedLabels, _Histogram):
    pass


class DualPoolMetrics:
    """The plugin's metrics; one instance per registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.registry = registry
        self.requests = Counter(
            "dualpool_requests",
            "Requests routed, each counted once at its first decision, by model group, pool and "
            "reason (later hops of a request: dualpool_retries_total, dualpool_failovers_total, "
            "dualpool_misroutes_recovered_total).",
            ["model_group", "pool", "reason"], registry=registry)
        self.retries = Counter(
            "dualpool_retries",
            "Attempts after the first in the pool already chosen (LiteLLM's retries).",
            ["model_group", "pool"], registry=registry)
        self.decision_seconds = Histogram(
            "dualpool_decision_seconds", "Time to estimate and decide one request.",
            buckets=DECISION_BUCKETS_SECONDS, registry=registry)
        self.estimate_error = Histogram(
            "dualpool_prompt_tokens_estimate_error_ratio",
            "Relative error of the estimated prompt tokens against the backend's usage.",
            ["model_group", "category"], buckets=ERROR_BUCKETS_RATIO, registry=registry)
        self.bytes_per_token = Gauge(
            "dualpool_learned_bytes_per_token", "Learned bytes-per-token ratio per category.",
            ["model_group", "category"], registry=registry,
            multiprocess_mode="mostrecent")  # workers share one state: the latest write
        self.spread = Gauge(
            "dualpool_learned_spread_ratio",
            "Learned spread per category: mean absolute relative error of the estimate before "
            "each observation (sigma); routing adds gamma * sigma to the prompt estimate.",
            ["model_group", "category"], registry=registry,
            multiprocess_mode="mostrecent")  # as the ratio: one shared state
        self.learning = Counter(
            "dualpool_learning_samples",
            "Finished requests by learning outcome (learned, rejected, limited, untrusted, "
            "no_backend_usage, invalid_usage; skipped: an ordinary request of a settled key "
            "left out of the learning sample, see dualpool_settings.learning).",
            ["model_group", "outcome"], registry=registry)
        self.misroutes = Counter(
            "dualpool_misroutes",
            "Context-length rejections by a backend of the pool the plugin chose, when a larger "
            "pool exists (the largest pool's rejections are refusals).",
            ["model_group", "pool"], registry=registry)
        self.misroutes_recovered = Counter(
            "dualpool_misroutes_recovered",
            "Rejected requests served by the next larger pool.",
            ["model_group", "from_pool", "to_pool"], registry=registry)
        self.spillovers = Counter(
            "dualpool_spillovers", "Requests sent to a larger pool because theirs was saturated.",
            ["model_group", "from_pool", "to_pool"], registry=registry)
        self.failovers = Counter(
            "dualpool_failovers",
            "Hops of a request to another pool because its pool had no healthy deployment left "
            "for a retry (counted once in dualpool_requests_total, at its first decision).",
            ["model_group", "from_pool", "to_pool"], registry=registry)
        self.refusals = Counter(
            "dualpool_refusals",
            "Requests answered with the plugin's context-length 400: no pool (that the caller "
            "may use) fits the estimate, before any backend call (fits_nowhere, not_allowed); "
            "or the largest pool rejected the request and no larger one exists (fits_nowhere, "
            "after that backend call).",
            ["model_group", "reason"], registry=registry)
        self.deployments_without_limit = Gauge(
            "dualpool_deployments_without_limit",
            "Deployments of a dual-pool group left out of routing because their max_model_len "
            "is neither configured nor read from their backend yet (retried every "
            "discovery.retry_seconds); alert above 0.",
            ["model_group"], registry=registry,
            multiprocess_mode="livemax")  # each worker reads the backends itself
        self.arbitrations = Counter(
            "dualpool_arbitrations",
            "Exact-count requests (POST /tokenize) for ambiguous requests, by outcome: exact "
            "(the count decided), timeout / error / unsupported (404) / no_deployment (none "
            "asked) / skipped_busy (at the concurrency cap): the estimate decided.",
            ["model_group", "outcome"], registry=registry)
        self.arbitration_seconds = Histogram(
            "dualpool_arbitration_seconds", "Wall time of one /tokenize call (any outcome).",
            ["model_group"], buckets=ARBITRATION_BUCKETS_SECONDS, registry=registry)
        self.decisions_by_tier = Counter(
            "dualpool_decisions_by_tier",
            "Planned requests by estimation tier: far (bytes alone), near (character counts), "
            "ambiguous (estimates straddle a pool limit).",
            ["model_group", "tier"], registry=registry)
        self.affinity = Counter(
            "dualpool_affinity",
            "Conversation affinity by outcome: held (moved up to its conversation's pool), "
            "agreed, expired, not_fitting, saturated (not held), pinned, evicted.",
            ["model_group", "outcome"], registry=registry)
        self.callback_errors = Counter(
            "dualpool_callback_errors", "Exceptions caught at the plugin's hook boundaries.",
            ["hook"], registry=registry)
        self.in_flight = Gauge(
            "dualpool_in_flight_requests", "Requests the plugin has sent to a pool and not seen end.",
            ["model_group", "pool"], registry=registry,
            multiprocess_mode="livesum")  # each worker counts its own requests
        # Shared calibration state (litellm_dualpool/state). Gauges name how workers' values
        # combine under PROMETHEUS_MULTIPROC_DIR (ignored in a single process).
        self.state_backend_up = Gauge(
            "dualpool_state_backend_up",
            "1 while the calibration state backend is reachable (worst worker under multiprocess).",
            ["backend"], registry=registry, multiprocess_mode="livemin")
        self.state_sync_errors = Counter(
            "dualpool_state_sync_errors",
            "Failed operations against the state backend, and unusable data read from it "
            "(decode: a stream entry skipped; restore: a snapshot refused or clamped); routing "
            "continues on local state.",
            ["operation"], registry=registry)
        self.state_observations = Counter(
            "dualpool_state_observations",
            "Observations applied to this worker's calibrator, by origin (local/remote) and outcome.",
            ["origin", "outcome"], registry=registry)
        self.state_pending = Gauge(
            "dualpool_state_pending_observations",
            "Observations waiting to be shared with the other workers.",
            registry=registry, multiprocess_mode="livesum")
        self.state_dropped = Counter(
            "dualpool_state_dropped_observations",
            "Observations never shared because the pending queue overflowed during an outage.",
            registry=registry)
        self.state_last_sync = Gauge(
            "dualpool_state_last_sync_timestamp_seconds",
            "Wall time of the last successful sync with the backend (oldest worker).",
            registry=registry, multiprocess_mode="livemin")


def init_group_series(metrics: DualPoolMetrics, model_group: str) -> None:
    """Create every arbitration and tier series of a model group at zero, so that a rate of
    an outcome that has not happened yet reads 0, not absent."""
    for outcome in ARBITRATION_OUTCOMES:
        metrics.arbitrations.labels(model_group, outcome)
    for tier in DECISION_TIERS:
        metrics.decisions_by_tier.labels(model_group, tier)
    metrics.arbitration_seconds.labels(model_group)
