"""The emulated server's Prometheus metrics, under vLLM's own names, in a per-app registry.

Names and labels follow vLLM V1 (``vllm/v1/metrics/loggers.py``, 0.32): every series carries
``model_name`` and ``engine``; counters are exposed with the ``_total`` suffix
(``vllm:num_preemptions_total``, ``vllm:prompt_tokens_total``, ...). The legacy V0 gauge
``vllm:gpu_cache_usage_perc`` is served beside ``vllm:kv_cache_usage_perc`` for older
dashboards and routers. Gauges are refreshed from the engine's load view at each scrape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# vLLM's own bucket edges (seconds) for the latency histograms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)


@dataclass(frozen=True, slots=True)
class LoadView:
    """What the gauges show: requests running and waiting, KV use (0-1), preemptions so far."""

    running: int
    waiting: int
    kv_usage_ratio: float
    preemptions_total: int


class EmulatorMetrics:
    """All series of one emulated server; ``render()`` gives the Prometheus text."""

    def __init__(self, model_name: str, load: Callable[[], LoadView]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._load = load
        self._preemptions_seen = 0
        labels = ("model_name", "engine")
        self._label_values = {"model_name": model_name, "engine": "0"}
        reg = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=reg, multiprocess_mode="mostrecent")

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels + extra, registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.gpu_cache_usage = gauge("vllm:gpu_cache_usage_perc",
                                     "GPU KV-cache usage (legacy name). 1 means 100 percent usage.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.request_success = counter("vllm:request_success", "Count of successfully processed requests.",
                                       ("finished_reason",))
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds",
                             "Histogram of e2e request latency in seconds.", LATENCY_BUCKETS)
        self.tpot = histogram("vllm:request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.", TPOT_BUCKETS)

    def _l(self, metric: Any) -> Any:
        return metric.labels(**self._label_values)

    def request_finished(self, *, prompt_tokens: int, generation_tokens: int, finished_reason: str,
                         ttft_seconds: float, e2e_seconds: float) -> None:
        self._l(self.prompt_tokens).inc(prompt_tokens)
        self._l(self.generation_tokens).inc(generation_tokens)
        self.request_success.labels(finished_reason=finished_reason, **self._label_values).inc()
        self._l(self.ttft).observe(ttft_seconds)
        self._l(self.e2e).observe(e2e_seconds)
        if generation_tokens > 1:
            self._l(self.tpot).observe((e2e_seconds - ttft_seconds) / (generation_tokens - 1))

    def render(self) -> bytes:
        view = self._load()
        self._l(self.running).set(view.running)
        self._l(self.waiting).set(view.waiting)
        self._l(self.kv_usage).set(view.kv_usage_ratio)
        self._l(self.gpu_cache_usage).set(view.kv_usage_ratio)
        if view.preemptions_total > self._preemptions_seen:
            self._l(self.preemptions).inc(view.preemptions_total - self._preemptions_seen)
            self._preemptions_seen = view.preemptions_total
        return generate_latest(self.registry)
