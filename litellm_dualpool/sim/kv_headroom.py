"""KV headroom of one vLLM configuration on a length mix: above how many running sequences its
KV cache can overflow, which is when vLLM preempts.

vLLM allocates KV blocks on demand and admits a request only when its whole prompt fits the free
blocks (``scheduler_reserve_full_isl``); what overflows the cache later is the running requests'
*growth* while they decode. It preempts (recomputes the last-admitted request) only when the
running requests' contexts together exceed the cache. So a pool cannot preempt when

    max_num_seqs * max_model_len <= kv_capacity_tokens          (the worst case, guaranteed)

and rarely preempts when the P99 of the KV demand of ``max_num_seqs`` running requests, drawn
from the pool's own lengths, fits the cache. The demand model: a running request is sampled in
proportion to how long it stays running (its engine steps: output tokens plus its prefill chunks),
and holds its prompt plus a uniform share of its output in whole blocks at that moment. Full
concurrency is the condition; a pool that never fills its ``max_num_seqs`` slots (light load) can
exceed ``safe_max_num_seqs`` and still not preempt, so this is a warning, not a prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from litellm_dualpool.sim.engine import EngineConfig

#: The most sequences the search considers (vLLM's largest default max_num_seqs is 1024).
MAX_SEQS = 4096


@dataclass(frozen=True, slots=True)
class KvHeadroom:
    """``safe_max_num_seqs``: the largest sequence count whose P99 KV demand fits the cache;
    ``worst_case_max_num_seqs``: the largest that fits even if every sequence reaches
    max_model_len; ``p99_demand_tokens``: the P99 demand of ``max_num_seqs`` running requests."""

    kv_capacity_tokens: int
    max_num_seqs: int
    max_model_len: int
    worst_case_max_num_seqs: int
    safe_max_num_seqs: int
    p99_demand_tokens: int

    @property
    def can_preempt(self) -> bool:
        """True when the cache can overflow (and vLLM preempt) with every slot busy."""
        return self.max_num_seqs > self.safe_max_num_seqs

    @property
    def demand_over_capacity(self) -> float:
        return self.p99_demand_tokens / self.kv_capacity_tokens

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "can_preempt": self.can_preempt,
                "demand_over_capacity": self.demand_over_capacity}


@dataclass(frozen=True, slots=True, eq=False)
class KvDemand:
    """The P99 KV demand of n running requests for every n up to ``p99_demand_tokens_by_seqs``'s
    length, so one draw answers the KV check of every ``max_num_seqs`` (the planner's search)."""

    kv_capacity_tokens: int
    max_model_len: int
    worst_case_max_num_seqs: int
    safe_max_num_seqs: int
    p99_demand_tokens_by_seqs: np.ndarray  # index n - 1

    def headroom(self, max_num_seqs: int) -> KvHeadroom:
        curve = self.p99_demand_tokens_by_seqs
        if len(curve) == 0:
            at_seqs = 0
        elif max_num_seqs <= len(curve):
            at_seqs = int(curve[max_num_seqs - 1])
        else:  # beyond the draw: grow by the last request's mean share
            at_seqs = int(curve[-1] + (max_num_seqs - len(curve)) * curve[-1] / len(curve))
        return KvHeadroom(self.kv_capacity_tokens, max_num_seqs, self.max_model_len,
                          self.worst_case_max_num_seqs, self.safe_max_num_seqs, at_seqs)


def kv_headroom(config: EngineConfig, prompt_tokens: np.ndarray, output_tokens: np.ndarray, *,
                quantile: float = 0.99, samples: int = 1000, seed: int = 0) -> KvHeadroom:
    """The KV check of ``config`` on these request lengths (those above max_model_len, which
    the pool refuses, are left out). Deterministic for a given seed."""
    demand = kv_demand(config, prompt_tokens, output_tokens, quantile=quantile, samples=samples, seed=seed)
    return demand.headroom(config.max_num_seqs)


def kv_demand(config: EngineConfig, prompt_tokens: np.ndarray, output_tokens: np.ndarray, *,
              quantile: float = 0.99, samples: int = 1000, seed: int = 0,
              min_seqs: int = 0) -> KvDemand:
    """The demand curve behind :func:`kv_headroom`, drawn up to at least
    ``max(config.max_num_seqs, min_seqs)`` running requests."""
    prompt = np.asarray(prompt_tokens, dtype=np.int64)
    output = np.asarray(output_tokens, dtype=np.int64)
    fits = prompt + output <= config.max_model_len
    prompt, output = prompt[fits], output[fits]
    capacity = config.kv_capacity_tokens
    worst = min(capacity // config.max_model_len, MAX_SEQS)
    if len(prompt) == 0:
        return KvDemand(capacity, config.max_model_len, worst, MAX_SEQS, np.zeros(0, dtype=np.int64))
    bs = config.block_size
    steps = output + -(-prompt // config.max_num_batched_tokens)
    weights = steps / steps.sum()
    # one draw of n_max running requests per sample; the cumulative sums give every n <= n_max.
    # Rows are the running requests: the first n are the same whatever n_max (two streams).
    mean_held = float((weights * (prompt + output / 2.0)).sum())
    wanted = max(config.max_num_seqs, min_seqs)
    n_max = int(min(MAX_SEQS, max(wanted, 2 * capacity / max(mean_held, 1.0) + 16)))
    picks = np.random.default_rng(seed).choice(len(prompt), size=(n_max, samples), p=weights)
    progress = np.random.default_rng(seed + 1).random((n_max, samples))
    held = prompt[picks] + np.floor(progress * output[picks]).astype(np.int64)
    demand = np.cumsum(-(-held // bs), axis=0, dtype=np.int64) * bs
    p99 = np.quantile(demand, quantile, axis=1)  # non-decreasing in n
    fitting = np.flatnonzero(p99 <= capacity)
    safe = int(fitting[-1]) + 1 if len(fitting) else 0
    return KvDemand(capacity, config.max_model_len, worst, max(safe, worst), p99)
