"""The analytical model against hand computations: closed form, ceilings, queueing formulas, the
TPOT-derived batch size, and the threshold sweep on constructed workloads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from litellm_dualpool.errors import ConfigError
from litellm_dualpool.planner.model import (
    BALANCER_POOLING,
    BALANCER_POOLING_MAX_INSTANCES,
    TPOT_STEP_MARGIN,
    Hardware,
    LengthMix,
    Planner,
    Slo,
    balancer_pooling,
    batch_tokens_for_tpot,
    closed_form_saving,
    full_steps_in_runs,
    instances_for_rate,
    make_plan,
    predict_load,
    predict_saving,
    prefill_seconds,
)
from litellm_dualpool.planner.queueing import erlang_c, mgc_wait


@pytest.mark.parametrize(("alpha", "rho", "expected"), [
    (0.9, 4.0, 0.675),       # 0.9 * (1 - 1/4)
    (0.95, 11.2 / 2.8, 0.7125),
    (1.0, 1.0, 0.0),         # no speed-up, no saving
    (0.5, 0.5, -0.5),        # a slower short pool costs more
])
def test_closed_form_matches_hand_computation(alpha: float, rho: float, expected: float) -> None:
    assert closed_form_saving(alpha, rho) == pytest.approx(expected)


@pytest.mark.parametrize(("alpha", "rho"), [(-0.1, 2.0), (1.1, 2.0), (0.5, 0.0)])
def test_closed_form_rejects_nonsense(alpha: float, rho: float) -> None:
    with pytest.raises(ConfigError):
        closed_form_saving(alpha, rho)


@pytest.mark.parametrize(("rate", "mu", "u", "expected"), [
    (1000.0, 11.2, 0.9, 100),   # 1000 / 10.08 = 99.2 -> 100
    (100.8, 11.2, 0.9, 10),     # an exact multiple does not round up
    (100.9, 11.2, 0.9, 11),
    (1000.0, 2.8, 1.0, 358),    # the paper's homogeneous fleet: 357.1 -> 358
    (0.0, 2.8, 0.9, 1),         # an idle pool keeps one instance
])
def test_discrete_sizing_is_a_ceiling_at_the_utilisation_cap(rate: float, mu: float, u: float,
                                                             expected: int) -> None:
    assert instances_for_rate(rate, mu, u) == expected


def test_erlang_c_hand_cases() -> None:
    assert erlang_c(1, 0.6) == pytest.approx(0.6)  # M/M/1: P(wait) = rho
    # c = 2, a = 1: Erlang B = (1/2) / (1 + 1 + 1/2) = 0.2; C = 0.2 / (1 - 0.5 * 0.8) = 1/3
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(4, 4.0) == 1.0
    # the normal approximation above the exact range is continuous with the recursion
    assert erlang_c(5000, 4900.0) == pytest.approx(erlang_c(4096, 4096 * 0.98), abs=0.15)


def test_mgc_wait_tail_of_mm1() -> None:
    wait = mgc_wait(1, 0.5, 1.0, 1.0)  # M/M/1, rho 0.5: waits w.p. 0.5, then Exp(mean 2)
    assert wait.p_wait == pytest.approx(0.5)
    assert wait.mean_if_waiting_seconds == pytest.approx(2.0)
    assert wait.quantile(0.99) == pytest.approx(2.0 * math.log(50.0))
    assert wait.quantile(0.4) == 0.0
    assert mgc_wait(1, 2.0, 1.0, 1.0).quantile(0.99) == math.inf  # unstable
    # burstier arrivals wait longer (Allen-Cunneen factor (ca^2 + cs^2) / 2)
    assert mgc_wait(2, 1.5, 1.0, 0.5, 4.0).mean_seconds > mgc_wait(2, 1.5, 1.0, 0.5, 1.0).mean_seconds


def test_length_mix_from_percentiles_and_dispersion() -> None:
    mix = LengthMix.from_percentiles({50: 1000, 90: 3000, 100: 8000}, {50: 100, 100: 500}, count=20000)
    assert np.median(mix.prompt_tokens) == pytest.approx(1000, rel=0.05)
    assert np.percentile(mix.prompt_tokens, 90) == pytest.approx(3000, rel=0.05)
    assert mix.prompt_tokens.max() <= 8000 and mix.arrival_dispersion() == 1.0
    rng = np.random.default_rng(0)
    poisson = np.cumsum(rng.exponential(0.01, 20000))
    clustered = np.sort(np.concatenate([rng.uniform(t, t + 0.05, 50) for t in rng.uniform(0, 200, 400)]))
    ones = np.ones(20000, dtype=np.int64)
    assert LengthMix(ones, ones, poisson).arrival_dispersion() == pytest.approx(1.0, abs=0.2)
    assert LengthMix(ones, ones, clustered).arrival_dispersion() > 5.0
    with pytest.raises(ConfigError):
        LengthMix.from_percentiles({50: 1000, 90: 500}, {50: 10})


HW = Hardware.build("h100", "llama-3.1-8b", tensor_parallel_size=1)


def _mix(seed: int = 0, n: int = 4000, long_share: float = 0.05) -> LengthMix:
    rng = np.random.default_rng(seed)
    short = rng.integers(300, 1500, n)
    long = rng.integers(12000, 28000, n)
    prompts = np.where(rng.random(n) < long_share, long, short)
    return LengthMix(prompts, rng.integers(50, 300, n))


@pytest.mark.parametrize("slo_ms", [40, 80, 160])
def test_batch_tokens_keep_a_full_step_within_the_tpot_target(slo_ms: int) -> None:
    mix = _mix()
    slo = Slo(2.0, slo_ms / 1000)
    tokens = batch_tokens_for_tpot(HW, mix, slo, 8192)
    st = HW.engine(8192, 1, 64).step_time
    offset = int(mix.prompt_tokens.mean() / 2)
    assert st.step_seconds(0, 0, ((offset, tokens),)) <= TPOT_STEP_MARGIN * slo.tpot_p99_seconds
    assert tokens % 64 == 0
    if tokens < 16384:  # the next size up breaks the budget
        assert st.step_seconds(0, 0, ((offset, tokens + 64),)) > TPOT_STEP_MARGIN * slo.tpot_p99_seconds


def test_queueing_check_improves_with_instances_and_flags_unstable_load() -> None:
    mix = _mix()
    engine = HW.engine(32768, 64, 1024)
    few, many = predict_load(engine, mix, 60.0, 4), predict_load(engine, mix, 60.0, 16)
    assert many.ttft_p99_seconds < few.ttft_p99_seconds
    assert many.prefill_busy_ratio < few.prefill_busy_ratio
    assert predict_load(engine, mix, 1e5, 1).ttft_p99_seconds == math.inf


def test_sweep_with_measured_throughputs_matches_hand_sizing() -> None:
    """50% of requests fit 2K, 95% fit 8K; measured mu short 10, long 2 (rho 5). At 100 req/s
    and u = 0.9: homogeneous ceil(100/1.8) = 56; at 8K short ceil(95/9) = 11 and long
    ceil(5/1.8) = 3, so 14 instances, saving 1 - 14/56 = 75%; closed form 0.95 * 0.8 = 76%."""
    n = 1000
    prompts = np.array([1000] * 500 + [5000] * 450 + [20000] * 50)
    mix = LengthMix(prompts, np.full(n, 100))
    planner = Planner(mix, 100.0, HW, measured_mu={"short": 10.0, "long": 2.0})
    plan = make_plan(planner, [2048, 8192], max_pools=2)
    assert plan.threshold == 8192
    assert plan.homogeneous.instances == 56
    assert [p.instances for p in plan.dual_pool.pools] == [11, 3]
    assert plan.saving_fraction == pytest.approx(0.75)
    assert plan.closed_form_saving_fraction == pytest.approx(0.76)
    at_2k = next(o for o in plan.sweep if o.threshold == 2048)
    assert at_2k.fleet.instances == math.ceil(50 / 9) + math.ceil(50 / 1.8)  # 6 + 28 = 34
    assert plan.dual_pool.usd_per_year < at_2k.fleet.usd_per_year
    # spillover capacity per instance: mu * (TTFT target 2 s + 100 output tokens * TPOT), at most
    # max_num_seqs; a measured pool has no modelled TPOT, so its target (80 ms) stands in:
    # short 10 * 10 = 100, long 2 * 10 = 20 capped at its 16 sequences
    short, long = plan.dual_pool.pools
    assert (short.max_in_flight, long.max_in_flight) == (min(100, short.flags.max_num_seqs), 16)


def test_engine_model_plan_is_consistent() -> None:
    planner = Planner(_mix(), 200.0, HW)
    plan = make_plan(planner, [2048, 8192], max_pools=3)
    assert plan.threshold in (2048, 8192)
    cheapest = min((o for o in plan.sweep if o.fleet.slo_met), key=lambda o: o.fleet.usd_per_year)
    assert plan.dual_pool.usd_per_year == cheapest.fleet.usd_per_year
    assert plan.saving_fraction == pytest.approx(1 - plan.dual_pool.usd_per_year / plan.homogeneous.usd_per_year)
    for pool in (*plan.homogeneous.pools, *plan.dual_pool.pools):
        assert pool.flags.max_num_batched_tokens >= pool.flags.max_num_seqs
        assert pool.gpus == pool.instances * HW.tensor_parallel_size
        if pool.binding == "slo":
            assert pool.prediction is not None and pool.prediction.meets(planner.slo)
        kv = pool.kv  # the KV check of the pool's own flags and lengths
        assert kv is not None and kv.max_num_seqs == pool.flags.max_num_seqs
        assert kv.worst_case_max_num_seqs == kv.kv_capacity_tokens // pool.flags.max_model_len
        assert kv.safe_max_num_seqs >= kv.worst_case_max_num_seqs
        assert kv.can_preempt == (pool.flags.max_num_seqs > kv.safe_max_num_seqs)
        assert pool.to_dict()["kv"]["can_preempt"] == kv.can_preempt  # type: ignore[index]
        if pool.prediction is not None:  # spillover capacity: Little's law at the TTFT target
            out = planner.mix.within(pool.low_tokens, pool.flags.max_model_len).output_tokens.mean()
            assert pool.max_in_flight == min(pool.flags.max_num_seqs, math.ceil(pool.mu_per_instance * (
                planner.slo.ttft_p99_seconds + out * pool.prediction.tpot_mean_seconds)))
    assert plan.dual_pool.can_preempt == any(p.kv.can_preempt for p in plan.dual_pool.pools)  # type: ignore[union-attr]
    assert [e.pools for e in plan.extra_pools] == [2, 3]
    assert plan.extra_pools[1].marginal_saving_fraction == pytest.approx(
        plan.extra_pools[1].saving_fraction - plan.extra_pools[0].saving_fraction)


def test_kv_check_flags_a_pool_whose_slots_overflow_its_cache() -> None:
    """32 sequences of 20K-30K-token requests on one H100 with Llama-3.1-8B (about 456K tokens of
    KV, 18 such requests at most) overflow; 8 do not. The planner reports it per pool and fleet."""
    rng = np.random.default_rng(1)
    mix = LengthMix(rng.integers(20000, 30000, 500), rng.integers(100, 400, 500))
    many = Planner(mix, 5.0, HW, long_max_model_len=32768, long_max_num_seqs=32).homogeneous()
    few = Planner(mix, 5.0, HW, long_max_model_len=32768, long_max_num_seqs=8).homogeneous()
    kv_many, kv_few = many.pools[0].kv, few.pools[0].kv
    assert kv_many is not None and kv_few is not None
    assert kv_many.can_preempt and many.can_preempt and kv_many.demand_over_capacity > 1.0
    assert not kv_few.can_preempt and not few.can_preempt
    assert kv_many.worst_case_max_num_seqs == kv_many.kv_capacity_tokens // 32768
    assert kv_many.worst_case_max_num_seqs <= kv_many.safe_max_num_seqs < 32
    assert many.to_dict()["can_preempt"] is True


def test_predict_saving_for_the_demo() -> None:
    totals = _mix().total_tokens
    saving = predict_saving(totals, 100.0, "h100", "llama-3.1-8b", tensor_parallel_size=1, threshold=4096)
    assert -1.0 < saving < 1.0
    assert saving == pytest.approx(predict_saving(totals, 100.0, "h100", "llama-3.1-8b",
                                                  tensor_parallel_size=1, threshold=4096))


def test_balancer_term_lies_between_a_blind_and_a_fully_pooled_balancer() -> None:
    """More pooling, less waiting: the pool's own term sits between prompts queued per
    instance and one queue for the whole pool; a fractional pooling lies between its two
    whole neighbours."""
    rng = np.random.default_rng(0)
    mix = LengthMix(rng.integers(500, 3000, 2000), rng.integers(50, 300, 2000))
    engine = Hardware.build("h100", "llama-3.1-8b").engine(8192, 64, 2048)
    waits = {g: predict_load(engine, mix, 120.0, 12, pooling=g).prefill_wait_p99_seconds
             for g in (1, None, 2, 2.5, 3, 12)}
    assert waits[1] > waits[None] > waits[12]
    assert waits[2] > waits[2.5] > waits[3]


def test_balancer_pooling_follows_the_share_of_the_count_that_is_the_prefill_queue() -> None:
    # rho 0.5, cv2 1: L = 0.5 + 0.25 * 2 / (2 * 0.5) = 1 prompt waiting or in prefill
    assert balancer_pooling(100, 0.5, 1.0, 0.0) == pytest.approx(100.0)  # nothing decodes: all pooled
    assert balancer_pooling(100, 0.5, 1.0, 1.0) == pytest.approx(10.0)  # w = 1 / (1 + 1)
    assert balancer_pooling(100, 0.5, 1.0, 3.0) == pytest.approx(100 ** 0.25)
    # a pool that decodes much: the count hides the queue, pairs (BALANCER_POOLING) remain
    assert balancer_pooling(100, 0.5, 1.0, 200.0) == pytest.approx(BALANCER_POOLING)
    assert balancer_pooling(1, 0.5, 1.0, 0.0) == pytest.approx(BALANCER_POOLING)


def test_balancer_pooling_stops_growing_beyond_the_measured_pool_size() -> None:
    """The fleet simulator's tail stops improving beyond about 160 instances at a fixed load per
    instance (docs/evaluation.md, round 5), so n in n ** w is capped there: with nothing
    decoding (w = 1) a pool of 1,000 or 10,000 pools over 160, and with w = 1/2 over sqrt(160)."""
    cap = BALANCER_POOLING_MAX_INSTANCES
    assert balancer_pooling(1000, 0.5, 1.0, 0.0) == pytest.approx(cap)
    assert balancer_pooling(10000, 0.5, 1.0, 0.0) == pytest.approx(cap)
    assert balancer_pooling(10000, 0.5, 1.0, 1.0) == pytest.approx(cap ** 0.5)
    assert balancer_pooling(cap // 2, 0.5, 1.0, 0.0) == pytest.approx(cap // 2)  # below the cap: n itself


def test_per_instance_prediction_does_not_improve_beyond_the_cap() -> None:
    """At a fixed load per instance (long prompts, a few requests decoding, Poisson arrivals)
    the prefill wait falls from a quarter of the cap to the cap and not beyond it."""
    rng = np.random.default_rng(0)
    mix = LengthMix(rng.integers(8000, 60000, 2000), rng.integers(200, 2000, 2000))
    engine = Hardware.build("a100", "llama-3-70b", tensor_parallel_size=8).engine(65536, 64, 2048)
    cap = BALANCER_POOLING_MAX_INSTANCES
    waits = [predict_load(engine, mix, 0.1 * n, n, arrival_cv2=1.0).prefill_wait_p99_seconds
             for n in (cap // 4, cap, 4 * cap, 16 * cap)]
    assert waits[0] > waits[1] > 0
    assert waits[2] == pytest.approx(waits[1])
    assert waits[3] == pytest.approx(waits[1])


def test_prefill_seconds_sum_the_chunk_steps_at_their_offsets() -> None:
    """A prompt of k chunks costs the engine's steps at offsets 0, c, 2c, ...: with compute-
    bound steps (2,048-token chunks of a 70B model on 8x A100) each chunk attends to c more
    tokens than the one before, so chunk j costs j * c^2 * a / F more than the first (a the
    attention flops per context token, F the effective flops); three chunks cost
    3 t(0) + 3 c^2 a / F. Two and a half chunks pay half of the third step; a prompt shorter
    than a chunk pays its share of the first."""
    engine = Hardware.build("a100", "llama-3-70b", tensor_parallel_size=8).engine(131072, 64, 2048)
    st = engine.step_time
    c = 2048
    t0 = st.step_seconds(0, 0, ((0, c),))
    growth = c * c * st.attention_flops_per_context_token / st.flops_per_second
    seconds, chunks = prefill_seconds(engine, np.array([3 * c, 5 * c // 2, c // 4]), 0.0)
    assert chunks.tolist() == [3.0, 2.5, 0.25]
    assert seconds[0] == pytest.approx(3 * t0 + 3 * growth)
    assert seconds[1] == pytest.approx(2 * t0 + growth + 0.5 * (t0 + 2 * growth))
    assert seconds[2] == pytest.approx(0.25 * t0)
    # decodes in the step shrink the chunk: 1,000 decodes leave c = 1,048 prompt tokens a step
    _, chunks = prefill_seconds(engine, np.array([3 * 1048]), 1000.0, 4000)
    assert chunks.tolist() == [3.0]


def test_a_long_prompts_prefill_grows_faster_than_its_length() -> None:
    """docs/evaluation.md, round 3: a 124K-token Mooncake prompt on 8x A100 (70B, 448-token
    steps) takes about 31 s in the engine, where one rate at the mean offset gives about 18 s;
    the per-chunk sum is the engine's own steps summed."""
    engine = Hardware.build("a100", "llama-3-70b", tensor_parallel_size=8).engine(131072, 64, 448)
    st = engine.step_time
    seconds, chunks = prefill_seconds(engine, np.array([124000]), 1.0)
    c = 447  # one decode in each step
    assert 30.0 < seconds[0] < 32.5
    assert seconds[0] > 1.5 * chunks[0] * st.step_seconds(1, 0, ((0, c),))


def test_full_steps_come_in_runs_of_a_prompts_chunks() -> None:
    """Every prompt reaching the instance brings all its chunks as a run: prompts of 3 chunks
    taking 0.6 s, 2 arrivals expected: the full steps are multiples of 3 (mean 6) at 0.2 s
    each; a request of 2 decode steps sees at most 2 of them, their seconds cut in proportion;
    no arrivals, no full steps."""
    rng = np.random.default_rng(0)
    chunks, seconds = np.full(5, 3.0), np.full(5, 0.6)
    full, full_s = full_steps_in_runs(np.full(4000, 1000), np.full(4000, 2.0), chunks, seconds, rng)
    assert np.all(full % 3 == 0)
    assert full.mean() == pytest.approx(6.0, rel=0.05)
    assert full_s.tolist() == pytest.approx((0.2 * full).tolist())
    full, full_s = full_steps_in_runs(np.full(4000, 2), np.full(4000, 2.0), chunks, seconds, rng)
    assert full.max() == 2 and full.min() == 0
    assert full_s.tolist() == pytest.approx((0.2 * full).tolist())
    full, full_s = full_steps_in_runs(np.full(4000, 1000), np.zeros(4000), chunks, seconds, rng)
    assert full.sum() == 0 and full_s.sum() == 0


def test_tpot_tail_is_a_whole_run_of_full_steps() -> None:
    """Prompts of 20 chunks, 10 decode steps per request: a request that meets one prompt's
    prefill spends all its 10 steps in that run, at the run's mean step S / k, so once more
    than 1% of requests meet one, the P99 TPOT is S / k (a binomial count of independent full
    steps, at a share rho_p / S * k * TPOT of the steps, would put the P99 near the decode step)."""
    engine = Hardware.build("h100", "llama-3.1-8b").engine(65536, 64, 2048)
    mix = LengthMix(np.full(500, 20 * 2047), np.full(500, 11))
    pred = predict_load(engine, mix, 0.3, 1)
    seconds, chunks = prefill_seconds(engine, mix.prompt_tokens[:1], pred.decode_batch,
                                      int(20 * 2047 + 5.5))
    assert pred.tpot_p99_seconds == pytest.approx(seconds[0] / chunks[0], rel=1e-6)
    decode = engine.step_time.step_seconds(1, 20 * 2047, ())
    assert pred.tpot_p99_seconds > 3 * decode


def test_predict_load_prices_prefill_by_chunk_offsets() -> None:
    """The prefill-busy share is lambda_i * E[S], S the per-chunk sum (prefill_seconds), not the
    prompt at one linear rate: one 8x A100 instance, 124K-token prompts at 448-token steps,
    0.01 prompts a second: rho_p = 0.01 * S(124K) (about 0.31)."""
    engine = Hardware.build("a100", "llama-3-70b", tensor_parallel_size=8).engine(131072, 16, 448)
    mix = LengthMix(np.full(200, 124000), np.full(200, 200))
    pred = predict_load(engine, mix, 0.01, 1)
    seconds, _ = prefill_seconds(engine, mix.prompt_tokens[:1], pred.decode_batch, 124100)
    assert pred.prefill_busy_ratio == pytest.approx(0.01 * seconds[0], rel=1e-9)
