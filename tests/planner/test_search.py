"""The configuration search and the SLO rules, each knob on a case small enough to check by hand:
GPU type, tensor-parallel size, max_num_seqs, max_num_batched_tokens, the three baselines, and the
prompt-dependent TTFT target."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from litellm_dualpool.errors import ConfigError
from litellm_dualpool.planner.model import (
    Hardware,
    LengthMix,
    Planner,
    PoolFlags,
    SearchSpace,
    Slo,
    make_plan,
    parse_ttft_slo,
    predict_load,
)
from litellm_dualpool.sim.catalog import get_gpu, vllm_default_scheduler_flags

H100 = Hardware.build("h100", "llama-3.1-8b", tensor_parallel_size=1)


def _mix(n: int = 1500, seed: int = 0) -> LengthMix:
    rng = np.random.default_rng(seed)
    prompts = np.where(rng.random(n) < 0.05, rng.integers(10000, 20000, n), rng.integers(200, 1500, n))
    return LengthMix(prompts, rng.integers(50, 300, n))


def _planner(space: SearchSpace, rate: float = 40.0, **kw: object) -> Planner:
    return Planner(_mix(), rate, H100, long_max_model_len=32768, search=space, saturation_requests=600,
                   **kw)  # type: ignore[arg-type]


def test_search_picks_the_cheaper_of_two_otherwise_identical_gpus() -> None:
    """Same datasheet, a quarter of the price: every pool and the tuned baseline move to it, and
    the tuned baseline costs exactly a quarter of the same configuration at the full price."""
    cheap = dataclasses.replace(get_gpu("h100"), name="h100-cheap", usd_per_gpu_hour=1.005)
    full = _planner(SearchSpace((H100,), (1,)), rate=20.0)
    both = _planner(SearchSpace((H100, Hardware(cheap, H100.model, 1, usd_per_gpu_hour=1.005)), (1,)), rate=20.0)
    tuned_full = full.tuned_homogeneous()
    tuned_both = both.tuned_homogeneous()
    assert [p.hardware.gpu.name for p in tuned_both.pools] == ["h100-cheap"]  # type: ignore[union-attr]
    assert tuned_both.gpus == tuned_full.gpus
    assert tuned_both.usd_per_year == pytest.approx(tuned_full.usd_per_year / 4)
    assert {p.hardware.gpu.name for p in both.split([4096]).pools} == {"h100-cheap"}  # type: ignore[union-attr]


@pytest.mark.parametrize(("gpu", "max_model_len", "expected"), [
    # 70B BF16 = 141 GB of weights: TP 2 leaves an A100 no room for a 64K sequence (20 GB of KV),
    # TP 4 does; an L40S (45 GiB) needs TP 4 as well; a 1K sequence fits TP 2 on an A100 (72 GiB
    # at 0.9 utilisation minus 70.5 GB of weights and 1 GiB of reserve leaves ~5 GB of KV)
    ("a100", 65536, [4, 8]), ("l40s", 65536, [4, 8]), ("a100", 1024, [2, 4, 8]),
    ("h200", 65536, [2, 4, 8]),  # 141 GB HBM: half the weights and the sequence fit
])
def test_tensor_parallel_options_are_those_where_weights_and_one_sequence_fit(
        gpu: str, max_model_len: int, expected: list[int]) -> None:
    base = Hardware(get_gpu(gpu), H100.model, 1, usd_per_gpu_hour=1.0)
    base = dataclasses.replace(base, model=Hardware.build("a100", "llama-3-70b").model)
    options = SearchSpace((base,)).tensor_parallel_options(base, max_model_len)
    assert [hw.tensor_parallel_size for hw in options] == expected


def test_candidates_cap_seqs_at_the_kv_safe_count_and_try_both_batch_sizes() -> None:
    planner = _planner(SearchSpace((H100,), (1,)))
    cands = planner.candidates(0, 4096, "short")
    tokens = {c.flags.max_num_batched_tokens for c in cands}
    derived = planner.derived_batch_tokens(4096, 0, H100)
    assert tokens == {derived, vllm_default_scheduler_flags(H100.gpu)[1]}
    for c in cands:
        safe = planner.kv(PoolFlags(4096, 1, c.flags.max_num_batched_tokens), 0, H100).safe_max_num_seqs
        assert c.flags.max_num_seqs <= min(safe, c.flags.max_num_batched_tokens)
        # the floor is the utilisation-cap sizing: no SLO check can go below it
        n = math.ceil(planner.rate_per_second * planner.mix.share_within(0, 4096) / (0.9 * c.mu_per_instance) - 1e-9)
        assert c.floor_usd_per_year == pytest.approx(max(n, 1) * H100.usd_per_instance_year)
    # the chosen short pool is no costlier than the best candidate sized alone
    chosen = planner.search_pool("short", 0, 4096, "short")
    best_floor = min(c.floor_usd_per_year for c in cands)
    assert chosen.usd_per_year >= best_floor
    for c in sorted(cands, key=lambda c: c.floor_usd_per_year)[:3]:
        alone = planner.size_pool("short", c.flags, 0, "short", c.hardware)
        assert chosen.usd_per_year <= alone.usd_per_year or alone.binding == "slo_infeasible"


def test_search_uses_more_slots_when_they_raise_throughput() -> None:
    """8B on one H100 with short requests: 16 slots leave most of the GPU idle (decode reads the
    weights once per step whatever the batch), so the searched pool runs more than 16."""
    planner = _planner(SearchSpace((H100,), (1,), (16, 64, 256)))
    pool = planner.search_pool("short", 0, 4096, "short")
    at16 = planner.size_pool("short", PoolFlags(4096, 16, pool.flags.max_num_batched_tokens), 0, "short")
    assert pool.flags.max_num_seqs > 16
    assert pool.instances < at16.instances


def test_plan_reports_three_baselines_and_tuned_is_never_costlier() -> None:
    planner = _planner(SearchSpace((H100,), (1, 2)))
    plan = make_plan(planner, [4096], max_pools=2)
    paper, default, tuned = (plan.baselines[k] for k in ("paper", "vllm_default", "tuned_homogeneous"))
    assert paper.pools[0].flags.max_num_seqs == 16
    assert (default.pools[0].flags.max_num_seqs, default.pools[0].flags.max_num_batched_tokens) == (1024, 8192)
    assert tuned.usd_per_year <= min(paper.usd_per_year, default.usd_per_year)
    assert plan.homogeneous is tuned
    assert plan.saving_fraction == pytest.approx(1 - plan.dual_pool.usd_per_year / tuned.usd_per_year)
    d = plan.to_dict()
    assert d["saving_vs_tuned_fraction"] == d["saving_fraction"]
    assert d["baselines"]["tuned_homogeneous"]["config"]["gpu"] == "h100"  # type: ignore[index]
    assert set(d["baselines"]) == {"paper", "vllm_default", "tuned_homogeneous"}  # type: ignore[arg-type]
    assert d["binding_constraint"].split(":")[0] in {p.name for p in plan.dual_pool.pools}  # type: ignore[union-attr]
    for pool in d["dual_pool"]["pools"]:  # type: ignore[index]
        assert {"gpu", "tp", "max_num_seqs", "max_num_batched_tokens", "instances"} <= set(pool)


@pytest.mark.parametrize(("text", "expected"), [
    ("2s", (2.0, 0.0)), ("2", (2.0, 0.0)), ("500ms", (0.5, 0.0)),
    ("2s+1s/8k", (2.0, 1.0 / 8192)), ("1.5s + 250ms/1024", (1.5, 0.25 / 1024)), ("2s+0s/8k", (2.0, 0.0)),
])
def test_ttft_slo_parser(text: str, expected: tuple[float, float]) -> None:
    base, per_token = parse_ttft_slo(text)
    assert base == pytest.approx(expected[0]) and per_token == pytest.approx(expected[1])


@pytest.mark.parametrize("text", ["", "fast", "2s+1s", "2s+1s/0", "-1s", "0s", "2s+xs/8k", "2s+1s/abc"])
def test_ttft_slo_parser_refuses_nonsense_with_its_path(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_ttft_slo(text)
    assert info.value.path == "slo_ttft"


def test_prompt_dependent_ttft_target_is_met_per_request() -> None:
    """Without an allowance the checked TTFT is the P99 TTFT itself; with 1 s per 8K tokens a
    pool of long prompts that misses a flat 2 s meets 2 s + its prompts' allowance."""
    rng = np.random.default_rng(3)
    mix = LengthMix(rng.integers(12000, 16000, 800), rng.integers(50, 200, 800))
    engine = H100.engine(32768, 64, 2048)
    flat, scaled = Slo(0.5, 0.2), Slo(0.5, 0.2, 1.0 / 8192)
    p_flat = predict_load(engine, mix, 4.0, 4, slo=flat)
    p_scaled = predict_load(engine, mix, 4.0, 4, slo=scaled)
    assert p_flat.ttft_over_allowance_p99_seconds == pytest.approx(p_flat.ttft_p99_seconds)
    assert p_scaled.ttft_p99_seconds == pytest.approx(p_flat.ttft_p99_seconds)
    # each prompt of 12K-16K tokens gets 1.5-2 s more
    assert p_scaled.ttft_over_allowance_p99_seconds < p_flat.ttft_p99_seconds - 1.4
    assert not p_flat.meets(flat) and p_flat.failing(flat) == "ttft"
    assert p_scaled.meets(scaled) and p_scaled.failing(scaled) is None


def test_per_class_ttft_slo_parses_and_targets_each_request_by_its_class() -> None:
    slo = Slo.parse("short=1s,long=4s+1s/8k", 0.05)
    assert (slo.ttft_p99_seconds, slo.ttft_seconds_per_prompt_token) == (1.0, 0.0)
    assert slo.long_ttft_p99_seconds == 4.0
    assert slo.long_ttft_seconds_per_prompt_token == pytest.approx(1.0 / 8192)
    assert (slo.class_boundary_tokens, slo.tpot_p99_seconds) == (8192, 0.05)
    # a 1000-token prompt with 7000 tokens in total is short: target 1 s (no allowance); with
    # 9000 in total it is long: 4 s + 1000/8192 s, i.e. 3 s + 0.122 s over the short target
    allowance = slo.ttft_allowance_seconds(np.array([1000, 1000]), np.array([7000, 9000]))
    assert allowance == pytest.approx([0.0, 3.0 + 1000 / 8192])
    # the simulator holds each request to the same target, whichever pool serves it
    targets = slo.sim_targets().ttft_target_seconds(np.array([1000, 1000]), np.array([7000, 9000]))
    assert targets == pytest.approx([1.0, 4.0 + 1000 / 8192])
    assert Slo.parse("short=1s,long=3s,boundary=16k").class_boundary_tokens == 16384
    assert Slo.parse("2s+1s/8k") == Slo(2.0, 0.080, 1.0 / 8192)  # one target: no classes
    with pytest.raises(ConfigError, match="total tokens"):
        slo.ttft_allowance_seconds(np.array([1000]))


@pytest.mark.parametrize("text", ["short=1s", "long=2s", "short=1s,long=2s,short=3s", "short=1s,medium=2s",
                                  "short=1s,long=", "short=1s,long=2s,boundary=0", "short=fast,long=2s"])
def test_per_class_ttft_slo_refuses_nonsense_with_its_path(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        Slo.parse(text)
    assert info.value.path == "slo_ttft"


def test_per_class_target_sizes_a_pool_of_long_requests_by_the_long_target() -> None:
    """The same long requests: held to a flat 0.5 s they miss it; as the long class with 4 s
    they meet it at the same size (the class, not the pool, sets the target)."""
    rng = np.random.default_rng(3)
    mix = LengthMix(rng.integers(12000, 16000, 800), rng.integers(50, 200, 800))
    engine = H100.engine(32768, 64, 2048)
    flat, classed = Slo(0.5, 0.2), Slo.parse("short=500ms,long=4s", 0.2)
    assert not predict_load(engine, mix, 4.0, 4, slo=flat).meets(flat)
    assert predict_load(engine, mix, 4.0, 4, slo=classed).meets(classed)


def test_goodput_rho_prices_the_short_requests_on_both_configurations_at_the_slo() -> None:
    """rho = cost of the tuned homogeneous configuration sized for the short pool's requests at the
    SLO / cost of the short pool; the closed form with it is alpha * (1 - 1/rho) of the same set."""
    planner = _planner(SearchSpace((H100,), (1,)))
    plan = make_plan(planner, [4096], max_pools=2)
    (option,) = plan.sweep
    short = plan.dual_pool.pools[0]
    reference = plan.homogeneous.pools[0]
    mu = planner.mu(reference.flags, 0, 4096, "x", reference.hardware)
    n = math.ceil(short.rate_per_second / (0.9 * mu) - 1e-9)
    assert option.rho * short.usd_per_year >= n * H100.usd_per_instance_year - 1e-6  # the SLO only adds
    assert option.closed_form_saving_fraction == pytest.approx(option.alpha * (1 - 1 / option.rho))
    assert option.alpha == pytest.approx(planner.mix.share_within(0, 4096))
    assert option.rho_saturation == pytest.approx(planner.rho(short.flags, short.hardware))
    assert plan.to_dict()["rho_saturation"] == option.rho_saturation
