"""Single-instance capacity from the engine model: the per-instance throughput mu of a vLLM
configuration on a workload's length mix (the planner's rho is the ratio of two of these).

``saturation_throughput`` keeps one engine saturated (every request queued at t=0, drawn from the
workload's lengths) and measures completions per second between the 20th and 80th percentile of
completion times, which excludes the ramp-up and the drain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from litellm_dualpool.sim.engine import Engine, EngineConfig


@dataclass(frozen=True, slots=True)
class Throughput:
    requests_per_second: float
    output_tokens_per_second: float
    mean_running: float  # time-averaged batch size (running requests)
    preemptions_per_1000: float
    requests: int


def saturation_throughput(
    config: EngineConfig,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    *,
    requests: int = 2000,
    seed: int = 0,
) -> Throughput:
    """Requests that do not fit max_model_len are skipped (resampled) rather than refused."""
    rng = np.random.default_rng(seed)
    fits = np.flatnonzero(prompt_tokens + output_tokens <= config.max_model_len)
    if len(fits) == 0:
        raise ValueError(f"no request of the workload fits max_model_len={config.max_model_len}")
    picks = rng.choice(fits, size=requests, replace=True)
    engine = Engine(config)
    for i, idx in enumerate(picks):
        engine.submit(i, int(prompt_tokens[idx]), int(output_tokens[idx]), 0.0)
    now, finish_times, outputs, running_area = 0.0, [], [], 0.0
    while engine.has_work:
        running = engine.num_running
        result = engine.advance(now, 1 << 30)
        running_area += running * result.duration_seconds
        now = result.end_time
        for done in result.finished:
            finish_times.append(done.finish_time)
            outputs.append(done.output_tokens)
    times = np.array(finish_times)
    order = np.argsort(times, kind="stable")
    lo, hi = int(0.2 * len(times)), int(0.8 * len(times))
    window = times[order[hi]] - times[order[lo]]
    count = hi - lo
    out = np.array(outputs)[order[lo:hi]].sum()
    return Throughput(
        requests_per_second=count / window,
        output_tokens_per_second=float(out) / window,
        mean_running=running_area / now,
        preemptions_per_1000=1000.0 * engine.num_preemptions_total / requests,
        requests=requests,
    )
