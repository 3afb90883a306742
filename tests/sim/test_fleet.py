"""The fleet simulator: conservation, the routers, the real calibrator in the loop, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from litellm_dualpool.cli import main
from litellm_dualpool.core.policy import PolicySettings
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.sim.engine import EngineConfig
from litellm_dualpool.sim.fleet import Fate, SimPool, SloTargets, simulate
from litellm_dualpool.sim.routers import (
    OracleRouter,
    PolicyRouter,
    SinglePoolRouter,
    StaticRatioRouter,
)
from litellm_dualpool.sim.workload import Workload, synthetic

SHORT = EngineConfig("h100", "llama-3.1-8b", max_model_len=4096, max_num_seqs=64,
                     max_num_batched_tokens=4096)
LONG = EngineConfig("h100", "llama-3.1-8b", max_model_len=32768, max_num_seqs=16,
                    max_num_batched_tokens=4096)


def workload(n: int = 3000, rate: float = 40.0, seed: int = 3) -> Workload:
    return synthetic(n, rate, prompt_median_tokens=900, prompt_sigma=1.3, output_median_tokens=150,
                     max_total_tokens=80000, seed=seed)


def dual() -> list[SimPool]:
    return [SimPool("short", SHORT, 3), SimPool("long", LONG, 2)]


def test_every_request_is_completed_or_refused_and_counted() -> None:
    w = workload()
    assert (w.prompt_tokens > 32768).sum() > 0  # some fit nowhere
    result = simulate(w, dual(), PolicyRouter(), seed=1)
    fate = result.request_fate
    assert (fate != Fate.PENDING).all()
    completed = int((fate == Fate.COMPLETED).sum())
    assert completed + result.refused_gateway + result.refused_backend == len(w)
    assert result.fleet.completed == completed == sum(p.completed for p in result.pools)
    assert result.fleet.requests == len(w) and sum(p.requests for p in result.pools) + result.refused_gateway == len(w)
    # what fits nowhere is refused: at the gateway, or by the long backend when only the
    # conservative margin put it over (borderline); nothing over every pool is served
    too_long = w.prompt_tokens + w.output_tokens > 32768
    done = fate == Fate.COMPLETED
    assert too_long.sum() > 0 and not (done & too_long).any()
    assert np.isin(fate[too_long], [Fate.REFUSED_GATEWAY, Fate.REFUSED_BACKEND]).all()
    assert result.reasons["fits_nowhere"] == result.refused_gateway > 0
    assert np.isfinite(result.ttft_seconds[done]).all() and (result.ttft_seconds[done] > 0).all()
    assert (result.tpot_seconds[done] >= 0).all()
    assert result.fleet.gpus == 5 and result.fleet.usd_per_year == pytest.approx(5 * 4.02 * 8760)


@pytest.mark.parametrize("router", ["policy", "homogeneous"])
def test_decode_runs_change_nothing_but_speed(router: str) -> None:
    """The fast path (k identical decode steps per event, cut at arrivals) equals stepping
    every instance one engine step at a time."""
    w = workload(1500, rate=60.0)
    pools = dual() if router == "policy" else [SimPool("long", LONG, 4)]

    def run(decode_runs: bool):  # type: ignore[no-untyped-def]
        r = PolicyRouter() if router == "policy" else SinglePoolRouter("long")
        return simulate(w, pools, r, seed=4, decode_runs=decode_runs)

    fast, slow = run(True), run(False)
    assert (fast.request_pool == slow.request_pool).all()
    assert (fast.request_fate == slow.request_fate).all()
    np.testing.assert_allclose(fast.ttft_seconds, slow.ttft_seconds, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fast.tpot_seconds, slow.tpot_seconds, rtol=1e-9, atol=1e-9)
    assert fast.fleet.preemptions == slow.fleet.preemptions


def test_homogeneous_fleet_refuses_over_length_at_the_backend() -> None:
    w = workload(800)
    result = simulate(w, [SimPool("long", LONG, 5)], SinglePoolRouter("long"), balancer="round_robin")
    prompt_too_long = int((w.prompt_tokens > 32768).sum())
    assert result.refused_backend == prompt_too_long > 0
    assert result.refused_gateway == 0
    assert result.fleet.completed == len(w) - prompt_too_long
    # round robin spreads evenly: every instance served someone
    assert result.pools[0].requests == len(w)


def test_short_requests_go_short_long_ones_go_long() -> None:
    w = workload(2000)
    result = simulate(w, dual(), OracleRouter(PolicySettings(spillover_load_fraction=None)))
    total = w.prompt_tokens + w.output_tokens
    pool = result.request_pool
    assert (pool[total <= 4096] == 0).all()
    assert (pool[(total > 4096) & (total <= 32768)] == 1).all()


def test_static_ratio_misroutes_code_and_recovery_saves_it() -> None:
    w = workload(2000)
    w = Workload(w.name, w.arrival_seconds, w.prompt_tokens, w.output_tokens, w.category, ("code",))
    settings = PolicySettings(spillover_load_fraction=None)
    # code runs ~3.4 bytes/token: bytes/4.0 under-counts, so borderline prompts go short and
    # vLLM answers 400; the plugin's recovery sends them to the long pool
    static = simulate(w, dual(), StaticRatioRouter(settings), seed=2)
    assert static.recovered > 0
    # only prompts longer than the long pool itself stay refused
    assert static.refused_backend <= int((w.prompt_tokens > 32768).sum())
    no_recovery = simulate(w, dual(), StaticRatioRouter(settings), recovery=False, seed=2)
    assert no_recovery.refused_backend == static.refused_backend + static.recovered


def test_the_calibrator_learns_in_the_loop_and_beats_the_static_ratio() -> None:
    w = workload(3000)
    w = Workload(w.name, w.arrival_seconds, w.prompt_tokens, w.output_tokens, w.category, ("code",))
    settings = PolicySettings(spillover_load_fraction=None)
    router = PolicyRouter(settings, model_group="m")
    learned = simulate(w, dual(), router, seed=2)
    static = simulate(w, dual(), StaticRatioRouter(settings), seed=2)
    view = router.calibrator.ratio(router.key("code"))
    assert view.samples > 1000
    assert 3.1 < view.bytes_per_token < 3.7  # the synthesised code ratio is 3.4
    assert learned.recovered < static.recovered / 3


def test_preemptions_show_up_when_long_requests_crowd_a_small_cache() -> None:
    crowded = EngineConfig("h100", "llama-3.1-8b", max_model_len=32768, max_num_seqs=64,
                           max_num_batched_tokens=8192, num_gpu_blocks_override=6000)
    w = synthetic(1500, 30.0, prompt_median_tokens=6000, prompt_sigma=0.6, output_median_tokens=400,
                  max_total_tokens=60000, seed=5)
    result = simulate(w, [SimPool("long", crowded, 2)], SinglePoolRouter("long"))
    assert result.fleet.preemptions > 0
    assert result.fleet.preemptions_per_1000 == pytest.approx(
        1000 * result.fleet.preemptions / result.fleet.completed)
    assert int(result.request_preemptions.sum()) <= result.fleet.preemptions
    assert 0 < result.pools[0].kv_usage_mean_ratio <= 1


def test_simulate_command_prints_json_on_the_last_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    rows = ["timestamp,input_tokens,output_tokens"] + [f"{i * 0.1:.1f},{200 + 37 * i % 3000},{20 + i % 90}"
                                                        for i in range(400)]
    trace.write_text("\n".join(rows) + "\n")
    code = main(["simulate", "--trace", str(trace), "--rate", "20", "--gpu", "h100", "--model",
                 "llama-3.1-8b", "--tensor-parallel-size", "1",
                 "--pool", "name=short,max_model_len=2048,max_num_seqs=64,max_num_batched_tokens=2048,instances=2",
                 "--pool", "name=long,max_model_len=8192,max_num_seqs=16,instances=1", "--json"])
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert len(out) == 1  # --json: stdout is the JSON object alone, the table goes to stderr
    data = json.loads(out[-1])
    assert data["requests"] == 400 and data["router"] == "dual_pool"
    assert [p["name"] for p in data["pools"]] == ["short", "long"]
    assert data["fleet"]["completed"] + data["refused_gateway"] + data["refused_backend"] == 400
    assert "TTFT p99" in captured.err


def test_simulate_command_reports_bad_pool_specs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--synthetic", "10", "--pool", "max_model_len=8192"]) == 2
    assert "pool[0].name" in capsys.readouterr().err


def test_spillover_capacity_below_the_slots_spills_an_overloaded_short_pool_sooner() -> None:
    """One short instance with most of the load: with the slots as capacity (64 per instance)
    spillover waits until nearly 58 requests are in flight; with a capacity of 8 (what the
    planner derives from the TTFT target) it starts sooner, and the short pool's TTFT holds."""
    w = workload(n=1500, rate=60.0)
    settings = PolicySettings(spillover_load_fraction=0.9)
    slots = simulate(w, [SimPool("short", SHORT, 1), SimPool("long", LONG, 3)], OracleRouter(settings))
    capped = simulate(w, [SimPool("short", SHORT, 1, max_in_flight=8), SimPool("long", LONG, 3)],
                      OracleRouter(settings))
    assert capped.reasons.get("spillover", 0) > slots.reasons.get("spillover", 0)
    assert capped.pools[0].requests < slots.pools[0].requests
    assert capped.pools[0].ttft_p99_seconds < slots.pools[0].ttft_p99_seconds
    with pytest.raises(ConfigError):
        SimPool("short", SHORT, 1, max_in_flight=0)


def test_attainment_per_request_class_and_a_ttft_target_that_grows_with_the_prompt() -> None:
    """Long prompts take long to prefill: with a tight flat TTFT target the long class fails
    more than the short one, and an allowance per prompt token lifts exactly those requests."""
    w = workload(n=1500, rate=20.0)
    flat = simulate(w, dual(), OracleRouter(), seed=1, slo=SloTargets(0.3, 0.2))
    grown = simulate(w, dual(), OracleRouter(), seed=1, slo=SloTargets(0.3, 0.2, 1.0 / 1024))
    by_class = flat.slo_attainment_by_class
    assert set(by_class) == {"short", "long"}
    assert by_class["long"] < by_class["short"]
    # the same run (same timings), judged per request against prompt-dependent targets
    assert np.array_equal(flat.ttft_seconds, grown.ttft_seconds, equal_nan=True)
    assert grown.slo_attainment_by_class["long"] > by_class["long"]
    assert grown.fleet.slo_attainment >= flat.fleet.slo_attainment
    done = flat.request_fate == Fate.COMPLETED
    ok = done & (flat.ttft_seconds <= 0.3 + w.prompt_tokens / 1024) & (flat.tpot_seconds <= 0.2)
    assert grown.fleet.slo_attainment == pytest.approx(ok.sum() / len(w))
    assert flat.to_dict()["slo_attainment_by_class"] == by_class
