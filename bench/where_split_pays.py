"""Where the split pays: the planner's best homogeneous fleet (searched like the pools) beside its
best split, per scenario, and the fleet simulator's check of the saving against that tuned fleet.

Rerun (planner only, ~4 min on 2 cores; with the simulator check, --sim, ~20-25 min; the arrival
sensitivity section, --arrivals, ~10 min):
    .venv/bin/python bench/where_split_pays.py [--sim | --arrivals] [--only KEYS] [--json]

It rewrites the "Where the split pays" section at the top of docs/evaluation.md (between the
markers below) and leaves the rest of the page to bench/evaluation.py.

Per scenario the planner (`litellm_dualpool.planner`, with its configuration search) sizes three
homogeneous baselines (paper: 16 sequences; vllm_default: vLLM's flags for the GPU;
tuned_homogeneous: the cheapest the search finds) and the best split. With --sim the simulator
runs both the tuned homogeneous fleet and the split on a 1/K slice (arrivals superposed at 1/K of
the rate, each pool's own GPU, TP and flags), finds the smallest instance counts whose pools meet
the SLO (P99 TTFT over each request's allowance and P99 TPOT, per pool) and are stable, and
compares the two savings against the tuned fleet.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from litellm_dualpool.core.policy import PolicySettings
from litellm_dualpool.planner.model import (
    BALANCER_POOLING,
    BALANCER_POOLING_MAX_INSTANCES,
    FleetPlan,
    Hardware,
    LengthMix,
    Plan,
    Planner,
    PoolPlan,
    SearchSpace,
    Slo,
    make_plan,
)
from litellm_dualpool.sim.catalog import get_gpu, get_model
from litellm_dualpool.sim.compare import Interval, block_bootstrap_interval
from litellm_dualpool.sim.fleet import FleetResult, SimPool, simulate
from litellm_dualpool.sim.routers import OracleRouter, SinglePoolRouter
from litellm_dualpool.sim.workload import (
    Workload,
    arrival_dispersion,
    from_cdf,
    read_cdf_file,
    read_trace,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DOC = REPO / "docs" / "evaluation.md"
START = "<!-- where-split-pays:start -->"
END = "<!-- where-split-pays:end -->"


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    source: str  # a trace under data/traces, or a CDF under data/workloads
    rate: float
    gpus: tuple[str, ...]
    model: str
    dtype: str
    ttft: str  # --slo-ttft form
    slice_k: int
    sim_seconds: float


SCENARIOS = (
    Scenario("azure-conv", "Azure 2023 conv, Llama-3-70B BF16, A100", "traces/azure2023/AzureLLMInferenceTrace_conv.csv",
             1000, ("a100",), "llama-3-70b", "bfloat16", "2s", 4, 60),
    Scenario("azure-code", "Azure 2023 code, Llama-3-70B BF16, A100", "traces/azure2023/AzureLLMInferenceTrace_code.csv",
             1000, ("a100",), "llama-3-70b", "bfloat16", "2s", 8, 60),
    Scenario("lmsys", "LMSYS-Chat CDF, Llama-3-70B BF16, A100", "workloads/lmsys_cdf.json",
             1000, ("a100",), "llama-3-70b", "bfloat16", "2s+1s/8k", 3, 60),
    Scenario("mooncake", "Mooncake conversation, Llama-3-70B BF16, A100", "traces/mooncake/conversation_trace.jsonl",
             1000, ("a100",), "llama-3-70b", "bfloat16", "2s+1s/4k", 10, 60),
    Scenario("agent", "Agent-heavy CDF (long context), Llama-3-70B BF16, A100", "workloads/agent_heavy_cdf.json",
             200, ("a100",), "llama-3-70b", "bfloat16", "2s+1s/4k", 3, 60),
    Scenario("qwen-mi300x", "Azure 2023 conv, Qwen3-235B-A22B FP8, MI300X",
             "traces/azure2023/AzureLLMInferenceTrace_conv.csv", 10000, ("mi300x",), "qwen3-235b-a22b", "fp8", "2s",
             10, 30),
    Scenario("llama8b-mixed", "Azure 2023 conv, Llama-3.1-8B BF16, H100 / A100 / L40S / L4 allowed",
             "traces/azure2023/AzureLLMInferenceTrace_conv.csv", 1000, ("h100", "a100", "l40s", "l4"),
             "llama-3.1-8b", "bfloat16", "2s", 5, 60),
)
CDF_COUNT = 20000
#: Balancer terms compared per pool against the simulator: None is the planner's own per-pool
#: term (``balancer_pooling``), the numbers fixed poolings for every pool.
POOLINGS: tuple[float | None, ...] = (None, 1, 2, 4, 8)
#: Fewest one-second windows a burstiness figure is shown for.
MIN_WINDOWS = 5


def workload_of(sc: Scenario) -> Workload:
    path = DATA / sc.source
    if sc.source.startswith("workloads/"):  # a CDF: Poisson arrivals at the planned rate
        return from_cdf(read_cdf_file(path), CDF_COUNT, sc.rate, name=sc.key)
    return read_trace(path)


def planner_for(sc: Scenario, work: Workload, rate: float | None = None) -> Planner:
    model = get_model(sc.model)
    gpus = [get_gpu(g) for g in sc.gpus]
    options = tuple(Hardware(g, model, 1, sc.dtype, usd_per_gpu_hour=g.usd_per_gpu_hour or 0.0) for g in gpus)
    rate = rate or sc.rate
    mix = (LengthMix.from_workload(work) if sc.source.startswith("workloads/")
           else LengthMix.from_trace(work, rate))
    return Planner(mix, rate, Hardware.build(gpus[0], model, dtype=sc.dtype), slo=Slo.parse(sc.ttft),
                   search=SearchSpace(options))


def _config(pool: PoolPlan) -> str:
    hw = pool.hardware
    label = hw.label if hw else "-"
    return f"{label}, {pool.flags.max_num_seqs} seqs, {pool.flags.max_num_batched_tokens} tok"


def _fleet_text(fleet: FleetPlan) -> str:
    return "; ".join(f"{p.name} <= {p.flags.max_model_len}: {p.instances} x ({_config(p)})" for p in fleet.pools)


def why(plan: Plan) -> str:
    """One sentence on the outcome, from the plan's own numbers."""
    tuned = plan.homogeneous.pools[0]
    short, long_ = plan.dual_pool.pools[0], plan.dual_pool.pools[-1]
    label = tuned.hardware.label if tuned.hardware else "-"
    if plan.rho <= 1.02:
        verdict = "yes" if plan.saving_fraction > 0.005 else "no"
        tail = ("so the split has nothing to gain and its long pool only adds cost" if verdict == "no"
                else "so what the split saves comes from sizing the long requests apart")
        return (f"{verdict}: at the SLO the short requests cost no less on a short-configured pool than on the tuned "
                f"homogeneous {label} with {tuned.flags.max_num_seqs} sequences (goodput rho {plan.rho:.2f}), {tail}")
    long_share = long_.usd_per_year / plan.dual_pool.usd_per_year
    if plan.saving_fraction <= 0.005:
        return (f"no: the short pool serves its {plan.alpha:.0%} of requests {plan.rho:.2f}x cheaper at the SLO, but "
                f"the long pool ({long_share:.0%} of the split's cost, sized by {long_.constraint}) costs more than "
                "the homogeneous fleet spends on those requests")
    hw = " on other hardware" if short.hardware != tuned.hardware else ""
    return (f"yes: {plan.alpha:.0%} of requests run {plan.rho:.2f}x cheaper at the SLO on the short pool{hw}; the "
            f"long pool is {long_share:.0%} of the cost, sized by {long_.constraint}")


# -- the simulator check --------------------------------------------------------------------

def slice_of(sc: Scenario, work: Workload, k: int, seconds: float | None = None) -> Workload:
    """Every k-th request's worth of the scenario's traffic for ``seconds`` (default the scenario's)."""
    span = sc.sim_seconds if seconds is None else seconds
    if sc.source.startswith("workloads/"):
        return from_cdf(read_cdf_file(DATA / sc.source), int(sc.rate / k * span), sc.rate / k,
                        name=sc.key, seed=1)
    return work.superposed(sc.rate / k, seconds=span, seed=1)


def pool_meets(res: FleetResult, i: int, slo: Slo, allowance: np.ndarray, capacity: float,
               sample: np.ndarray | None = None) -> bool:
    """P99 of TTFT over each request's allowance and P99 TPOT within the targets, and the pool's
    arrivals within ``capacity`` (the planner's utilisation cap of its saturation throughput
    over the run: the same headroom rule as the plan, so the check tests the queueing model
    and not the cap). ``sample``: the requests to judge by (indices, with repetition; a
    bootstrap draw), default all."""
    idx = np.arange(len(res.request_pool)) if sample is None else sample
    mask = res.request_pool[idx] == i
    if not mask.any():
        return True
    picked = idx[mask]
    ttft = res.ttft_seconds[picked] - allowance[picked]
    tpot = res.tpot_seconds[picked]
    if np.isnan(ttft).any():
        return False
    return (float(np.quantile(ttft, 0.99)) <= slo.ttft_p99_seconds
            and float(np.quantile(tpot, 0.99)) <= slo.tpot_p99_seconds and len(picked) < capacity)


def smallest(run: Callable[[list[int]], FleetResult], start: list[int], meets: Callable[[FleetResult, int], bool],
             fixed: list[bool]) -> list[int]:
    """Per pool (pools independent), the fewest instances meeting the SLO: grow until it holds,
    shrink until it fails, then bisect."""
    hi = [n if f else max(math.ceil(n * 1.3), n + 1) for n, f in zip(start, fixed, strict=True)]
    lo = [n if f else max(int(n * 0.6), 0) for n, f in zip(start, fixed, strict=True)]
    for _ in range(5):
        res = run(hi)
        bad = [i for i in range(len(hi)) if not fixed[i] and not meets(res, i)]
        if not bad:
            break
        for i in bad:
            lo[i], hi[i] = hi[i], math.ceil(hi[i] * 1.6)
    for _ in range(5):  # the lower end must fail, or the bisection could not go below it
        probe = [max(n, 1) for n in lo]
        res = run(probe)
        good = [i for i in range(len(lo)) if not fixed[i] and lo[i] >= 1 and meets(res, i)]
        if not good:
            break
        for i in good:
            hi[i], lo[i] = lo[i], int(lo[i] * 0.6)
    while any(h - lo_ > 1 for lo_, h in zip(lo, hi, strict=True)):
        mid = [(lo_ + h) // 2 if h - lo_ > 1 else h for lo_, h in zip(lo, hi, strict=True)]
        res = run(mid)
        for i in range(len(mid)):
            if hi[i] - lo[i] > 1:
                if meets(res, i):
                    hi[i] = mid[i]
                else:
                    lo[i] = mid[i]
    return hi


#: Instance counts around each pool's smallest that the interval's resampled checks choose from.
BAND = (-3, -2, -1, 0, 1, 2, 3)
#: Bootstrap blocks of arrival time (seconds) for the interval on the simulated saving.
BLOCK_SECONDS = 5.0


@dataclass
class SimulatedFleet:
    """A fleet sized by the simulator on a slice: its smallest counts, what they cost at full
    scale, and the runs of a band of counts around them (for the bootstrap interval)."""

    usd: float
    gpus: int
    counts: list[int]
    usd_per_instance: list[float]
    fixed: list[bool]
    band: dict[int, FleetResult]  # offset (BAND) -> the run with every free pool at count + offset
    meets: Callable[[FleetResult, int, np.ndarray], bool]
    k: int

    def usd_on(self, sample: np.ndarray) -> float:
        """Full-scale $/year of the smallest counts in the band meeting the SLO on ``sample``
        (a pool meeting it nowhere in the band takes the band's top: the interval is then
        censored at that end)."""
        usd = 0.0
        for i, (n, price) in enumerate(zip(self.counts, self.usd_per_instance, strict=True)):
            if self.fixed[i]:
                usd += n * price
                continue
            pick = next((n + d for d in BAND if n + d >= 1 and self.meets(self.band[d], i, sample)), n + max(BAND))
            usd += pick * self.k * price
        return usd


def simulate_fleet(sc: Scenario, plan: Plan, fleet: FleetPlan, work: Workload, k: int) -> SimulatedFleet:
    """The smallest version of ``fleet`` meeting the SLO on the slice, x K (a pool the trace
    leaves idle keeps the planner's size), with the runs of a band of counts around it."""
    slo = plan.slo
    pools = list(fleet.pools)
    targets = slo.sim_targets()
    allowance = slo.ttft_allowance_seconds(work.prompt_tokens, work.total_tokens)
    idle = [p.share < 1e-3 for p in pools]
    cache: dict[tuple[int, ...], FleetResult] = {}

    def specs(counts: list[int]) -> list[SimPool]:
        out = []
        for p, n in zip(pools, counts, strict=True):
            hw = p.hardware or plan.hardware
            out.append(SimPool(p.name, hw.engine(p.flags.max_model_len, p.flags.max_num_seqs,
                                                  p.flags.max_num_batched_tokens), max(n, 1), hw.usd_per_gpu_hour))
        return out

    def run(counts: list[int]) -> FleetResult:
        key = tuple(max(n, 1) for n in counts)
        if key not in cache:
            s = specs(list(key))
            # spillover off: pools independent, each sized for its own traffic as the planner sizes it
            router = (SinglePoolRouter(s[0].name) if len(s) == 1
                      else OracleRouter(PolicySettings(spillover_load_fraction=None)))
            cache[key] = simulate(work, s, router, slo=targets)
        return cache[key]

    capacity = [plan.utilisation * p.mu_per_instance * work.duration_seconds for p in pools]

    def meets_on(res: FleetResult, i: int, sample: np.ndarray | None = None) -> bool:
        return pool_meets(res, i, slo, allowance, res.pools[i].instances * capacity[i], sample)

    start = [max(round(p.instances / k), 1) for p in pools]
    counts = smallest(run, start, meets_on, idle)
    band = {d: run([n if idle[i] else max(n + d, 1) for i, n in enumerate(counts)]) for d in BAND}
    prices = [(p.hardware or plan.hardware).usd_per_instance_year for p in pools]
    full = [p.instances if idle[i] else n * k for i, (p, n) in enumerate(zip(pools, counts, strict=True))]
    usd = sum(n * price for n, price in zip(full, prices, strict=True))
    gpus = sum(n * (p.hardware or plan.hardware).tensor_parallel_size for p, n in zip(pools, full, strict=True))
    fixed_counts = [p.instances if idle[i] else n for i, (p, n) in enumerate(zip(pools, counts, strict=True))]
    return SimulatedFleet(usd, gpus, fixed_counts, prices, idle, band, meets_on, k)


def saving_interval(homogeneous: SimulatedFleet, split: SimulatedFleet, work: Workload) -> Interval:
    """95% interval on the simulated saving: a paired block bootstrap over arrival time, each
    draw re-sizing both fleets (within the band of counts run) on the same resampled requests."""
    return block_bootstrap_interval(
        work.arrival_seconds, lambda idx: 1.0 - split.usd_on(idx) / homogeneous.usd_on(idx),
        block_seconds=BLOCK_SECONDS)


def planner_on_slice(plan: Plan, fleet: FleetPlan, work: Workload, pooling: float | None) -> list[int]:
    """The planner's instance count per pool for the slice's own rate and arrivals (same
    configurations), with the balancer term pooling prompts over ``pooling`` instances (None:
    each pool's own term): against the simulator's counts this isolates the queueing model
    from the slicing."""
    planner = Planner(LengthMix.from_workload(work), work.rate_per_second, plan.hardware, slo=plan.slo,
                      pooling=pooling)
    return [planner.size_pool(p.name, p.flags, p.low_tokens, "slice", p.hardware).instances for p in fleet.pools]


# -- the section ----------------------------------------------------------------------------

def evaluate(sc: Scenario, sim: bool, log: Callable[[str], None]) -> dict[str, object]:
    t0 = time.perf_counter()
    work = workload_of(sc)
    planner = planner_for(sc, work)
    plan = make_plan(planner, max_pools=2)
    row: dict[str, object] = {"scenario": sc, "plan": plan, "plan_seconds": time.perf_counter() - t0}
    compressed = work.scaled_to_rate(sc.rate)
    row["burstiness"] = {"superposed": plan.burstiness.get("all", 1.0),
                         # a trace compressed into fewer than MIN_WINDOWS seconds has no per-second burstiness
                         "compressed": math.nan if sc.source.startswith("workloads/")
                         or compressed.duration_seconds < MIN_WINDOWS else arrival_dispersion(compressed.arrival_seconds)}
    log(f"{sc.key}: tuned {plan.homogeneous.gpus} GPUs, split {plan.dual_pool.gpus}, saving {plan.saving_fraction:.1%} "
        f"({row['plan_seconds']:.0f}s)")
    if sim:
        work_slice = slice_of(sc, work, sc.slice_k)
        h = simulate_fleet(sc, plan, plan.homogeneous, work_slice, sc.slice_k)
        d = simulate_fleet(sc, plan, plan.dual_pool, work_slice, sc.slice_k)
        interval = saving_interval(h, d, work_slice)
        pools = [*plan.homogeneous.pools, *plan.dual_pool.pools]
        at_slice = {g: [*planner_on_slice(plan, plan.homogeneous, work_slice, g),
                        *planner_on_slice(plan, plan.dual_pool, work_slice, g)] for g in POOLINGS}
        totals = work_slice.prompt_tokens + work_slice.output_tokens
        described = []
        for i, (p, n) in enumerate(zip(pools, [*h.counts, *d.counts], strict=True)):
            prompts = work_slice.prompt_tokens[(totals > p.low_tokens) & (totals <= p.flags.max_model_len)]
            cv2 = float(prompts.var() / prompts.mean() ** 2) if len(prompts) else 0.0
            described.append({"pool": ("tuned " if i == 0 else "split ") + p.name, "share": p.share, "sim": n,
                              "prompt_cv2": cv2, "planner": {g: at_slice[g][i] for g in POOLINGS}})
        row["sim"] = {"homogeneous_usd": h.usd, "dual_usd": d.usd, "saving": 1 - d.usd / h.usd,
                      "low": interval.low, "high": interval.high, "requests": len(work_slice),
                      "homogeneous_gpus": h.gpus, "dual_gpus": d.gpus, "pools": described}
        log(f"  simulated saving {1 - d.usd / h.usd:.1%} [{interval.low:.1%}, {interval.high:.1%}] "
            f"({time.perf_counter() - t0:.0f}s)")
    return row


def _baseline(fleet: FleetPlan) -> str:
    """GPUs and $/yr of a baseline fleet, flagged where no size the planner searches meets the SLO."""
    text = f"{fleet.gpus:,} (${fleet.usd_per_year / 1e6:.1f}M)"
    return text if fleet.slo_met else f"{text}, misses the SLO at any size searched"


def _vs(plan: Plan, baseline: str) -> str:
    """The split's saving against a baseline, or '-' where that baseline misses the SLO."""
    fleet = plan.baselines.get(baseline)
    if fleet is not None and not fleet.slo_met:
        return "- (misses the SLO)"
    return f"{plan.saving_vs(baseline):.1%}"


def _simulated(row: dict[str, object]) -> str:
    s = row.get("sim")
    if not isinstance(s, dict):
        return "-"
    return f"{s['saving']:.1%} ({s['low']:.1%} to {s['high']:.1%})"


def _num(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.1f}"


def render(rows: list[dict[str, object]], meta: dict[str, object]) -> str:
    out = [START, "## Where the split pays", "",
           f"Generated by `.venv/bin/python bench/where_split_pays.py{' --sim' if meta['sim'] else ''}` "
           f"({meta['date']}, {meta['platform']}, {meta['cpus']} CPUs, Python {meta['python']}; "
           f"{meta['wall']:.0f} s). Do not edit by hand: rerun the command.", "",
           "Per scenario the planner searches every pool's GPU type (among those allowed), tensor-parallel size, "
           "`max_num_seqs` (up to its KV-safe count) and `max_num_batched_tokens`, and the homogeneous fleet the "
           "same way. The headline saving is against that **tuned homogeneous** fleet; the paper's baseline "
           "(64K context, 16 sequences, on the first GPU) is beside it. Arrivals: the trace superposed as "
           "independent time-shifted copies (CDF workloads: Poisson). SLO: P99 TPOT 80 ms and the TTFT target "
           "shown, the same rule for both fleets. Burstiness is the variance over the mean of arrivals per "
           "second (1 = Poisson) for the superposed copies and for the trace compressed in time to the rate "
           "('-': a CDF workload, or a trace compressed into a few seconds).", "",
           "| scenario | TTFT target | best homogeneous | $/yr | best split | $/yr | saving vs tuned | "
           "simulated (95% interval) | vs vLLM default | vs paper | binding constraint | pays? |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sc: Scenario = r["scenario"]  # type: ignore[assignment]
        plan: Plan = r["plan"]  # type: ignore[assignment]
        tuned = plan.homogeneous
        out.append(f"| {sc.title}, {sc.rate:,.0f} req/s | {sc.ttft} | {tuned.gpus:,} GPUs: {_config(tuned.pools[0])} | "
                   f"${tuned.usd_per_year / 1e6:.1f}M | {plan.dual_pool.gpus:,} GPUs at {plan.threshold}: "
                   f"{_fleet_text(plan.dual_pool)} | ${plan.dual_pool.usd_per_year / 1e6:.1f}M | "
                   f"**{plan.saving_fraction:.1%}** | {_simulated(r)} | {_vs(plan, 'vllm_default')} | "
                   f"{_vs(plan, 'paper')} | {plan.binding_constraint} | {why(plan)} |")
    out += ["", "Baselines per scenario (GPUs, $/yr):", "",
            "| scenario | paper (16 seqs) | vLLM default | tuned homogeneous | configuration's share of the saving vs paper | "
            "closed form, goodput rho | closed form, saturation rho | burstiness superposed / compressed |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sc, plan = r["scenario"], r["plan"]
        b = plan.baselines  # type: ignore[attr-defined]
        burst = r["burstiness"]
        config = 1 - b["tuned_homogeneous"].usd_per_year / b["paper"].usd_per_year
        config_text = f"{config:.1%}" if b["paper"].slo_met else "- (paper misses the SLO)"  # type: ignore[attr-defined]
        out.append(f"| {sc.key} | {_baseline(b['paper'])} | {_baseline(b['vllm_default'])} | "
                   f"{_baseline(b['tuned_homogeneous'])} | {config_text} | "
                   f"{plan.closed_form_saving_fraction:.1%} (rho {plan.rho:.2f}) | "  # type: ignore[attr-defined]
                   f"{plan.closed_form_saturation_saving_fraction:.1%} (rho {plan.rho_saturation:.2f}) | "  # type: ignore[attr-defined]
                   f"{burst['superposed']:.2f} / {_num(burst['compressed'])} |")  # type: ignore[index]
    simulated = [r for r in rows if "sim" in r]
    if simulated:
        out += ["", "Planner against the simulator, saving vs the tuned homogeneous fleet (1/K slice, each pool's "
                "own hardware and flags, smallest instance counts meeting the SLO per pool, arrivals within the "
                f"planner's utilisation cap of {rows[0]['plan'].utilisation:.0%} of saturation, the same headroom "  # type: ignore[attr-defined]
                "rule as the plan). The interval is a paired block bootstrap over "
                f"{BLOCK_SECONDS:g}-second blocks of arrival time: each draw re-sizes both fleets (within "
                f"{min(BAND):+d}..{max(BAND):+d} slice instances of the smallest counts) on the same resampled "
                "requests:", "",
                "| scenario | K | requests | tuned GPUs planner / sim | split GPUs planner / sim | planner saving | "
                "simulated saving (95% interval) | error |", "|---|---|---|---|---|---|---|---|"]
        for r in simulated:
            sc, plan, s = r["scenario"], r["plan"], r["sim"]
            err = 100 * (plan.saving_fraction - s["saving"])  # type: ignore[attr-defined, index]
            out.append(f"| {sc.key} | {sc.slice_k} | {s['requests']:,} | {plan.homogeneous.gpus:,} / "  # type: ignore[attr-defined, index]
                       f"{s['homogeneous_gpus']:,} | {plan.dual_pool.gpus:,} / {s['dual_gpus']:,} | "  # type: ignore[attr-defined, index]
                       f"{plan.saving_fraction:.1%} | {s['saving']:.1%} ({s['low']:.1%} to {s['high']:.1%}) | "  # type: ignore[attr-defined, index]
                       f"{err:+.1f} pp |")
        errors = {r["scenario"].key: 100 * (r["plan"].saving_fraction - r["sim"]["saving"])  # type: ignore[attr-defined, index]
                  for r in simulated}
        met = [k for k, e in errors.items() if abs(e) <= 5]
        missed = [f"{k} ({e:+.1f} pp)" for k, e in errors.items() if abs(e) > 5]
        out += ["", f"Target, planner within 5 pp of the simulator on every scenario: met on {len(met)} of "
                f"{len(errors)}" + (f"; **missed** on {', '.join(missed)}." if missed else "."), "",
                "The balancer term. Least-loaded balancing picks the instance with the fewest requests in "
                "flight: decoding requests (mean B per instance, variance ~ B) plus prompts waiting or in prefill "
                "(M/G/1 mean L, variance ~ L). The share of the count's variance that is the prefill queue, "
                "w = L/(L+B), is how far the choice follows that queue, so the planner's prefill wait is the "
                "geometric mean of a queue per instance and a queue pooled over g = n^w instances (n the pool's "
                f"instances, at most `BALANCER_POOLING_MAX_INSTANCES` = {BALANCER_POOLING_MAX_INSTANCES}, where "
                "the simulator's tail at a fixed load per instance stops improving), never below pairs "
                f"(`BALANCER_POOLING` = {BALANCER_POOLING}): a pool of long prompts "
                "with little decoding pools almost like one queue, a pool that decodes much only in pairs. Per "
                "pool with traffic, the planner run on the slice's own rate and arrivals (same configuration) "
                "with its own term and with fixed poolings, beside the simulator's smallest count (slice "
                "instances) and the squared coefficient of variation of the pool's prompts:", "",
                "| scenario | pool | share | prompt cv2 | simulator | planner (own term) | "
                + " | ".join(f"pooling {g}" for g in POOLINGS if g is not None) + " |",
                "|---|---|---|---|---|---|" + "---|" * (len(POOLINGS) - 1)]
        for r in simulated:
            for pool in r["sim"]["pools"]:  # type: ignore[index]
                if pool["share"] >= 1e-3:
                    by = pool["planner"]
                    out.append(f"| {r['scenario'].key} | {pool['pool']} | {pool['share']:.1%} | "  # type: ignore[attr-defined]
                               f"{pool['prompt_cv2']:.2f} | {pool['sim']} | {by[None]} | "
                               + " | ".join(str(by[g]) for g in POOLINGS if g is not None) + " |")
        out += ["", "Where the best split is the tuned homogeneous configuration plus an idle long pool, the two "
                "savings agree by construction and only the GPU counts test the model. The simulator counts whole "
                "instances of a 1/K slice, which bounds how finely it can check. Per-pool balancer terms tried "
                "against this table, and the one that shipped, are under \"The balancer term: what was tried\" below."]
        for r in simulated:
            key = r["scenario"].key  # type: ignore[attr-defined]
            if abs(errors[key]) > 5:
                pools = [p for p in r["sim"]["pools"] if p["share"] >= 1e-3]  # type: ignore[index]
                detail = "; ".join(f"{p['pool']} planner {p['planner'][None]} vs simulator {p['sim']}" for p in pools)
                out += ["", f"Missed on {key} ({errors[key]:+.1f} pp), slice instances: {detail}."]
    else:
        out += ["", "Planner against the simulator: not run in this generation (add `--sim`)."]
    out += ["", "The sections below compare with the paper's baseline; bench/evaluation.py generated them on the "
            "date in their header (rerun it to refresh them with the current engine model).", "", END]
    return "\n".join(out)


def write_section(text: str, path: Path, start: str = START, end: str = END) -> None:
    """Replace the section between the markers; a new one goes right after the page's title
    (the split-pays section) or right after the split-pays section (any other)."""
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Evaluation\n"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + text + doc[doc.index(end) + len(end):]
    elif start != START and END in doc:
        at = doc.index(END) + len(END)
        doc = f"{doc[:at]}\n\n{text}{doc[at:]}"
    else:
        title, _, rest = doc.partition("\n")
        doc = f"{title}\n\n{text}\n{rest}"
    path.write_text(doc, encoding="utf-8")


# -- arrival sensitivity ---------------------------------------------------------------------

ARRIVALS_START = "<!-- arrival-sensitivity:start -->"
ARRIVALS_END = "<!-- arrival-sensitivity:end -->"
#: Arrival models compared (LengthMix.from_trace), in the order shown.
ARRIVAL_MODELS = (("superpose", "superposed copies (default)"),
                  ("burst", "superposed, burstier fit (worst of 1-30 s windows)"),
                  ("compress", "time compressed"))


def arrival_sensitivity(sc: Scenario, log: Callable[[str], None]) -> list[dict[str, object]]:
    """The planner's saving vs the tuned fleet under each arrival model of a trace scenario."""
    work = workload_of(sc)
    model = get_model(sc.model)
    out = []
    for key, label in ARRIVAL_MODELS:
        t0 = time.perf_counter()
        options = tuple(Hardware(get_gpu(g), model, 1, sc.dtype, usd_per_gpu_hour=get_gpu(g).usd_per_gpu_hour or 0.0)
                        for g in sc.gpus)
        planner = Planner(LengthMix.from_trace(work, sc.rate, key), sc.rate,
                          Hardware.build(get_gpu(sc.gpus[0]), model, dtype=sc.dtype), slo=Slo.parse(sc.ttft),
                          search=SearchSpace(options))
        plan = make_plan(planner, max_pools=2)
        out.append({"model": label, "all": plan.burstiness.get("all", 1.0), "over_4k": plan.burstiness.get("over_4k", 1.0),
                    "tuned_gpus": plan.homogeneous.gpus, "split_gpus": plan.dual_pool.gpus,
                    "threshold": plan.threshold, "saving": plan.saving_fraction})
        log(f"{sc.key} {key}: saving {plan.saving_fraction:.1%} ({time.perf_counter() - t0:.0f}s)")
    return out


def render_arrivals(rows: dict[str, list[dict[str, object]]], meta: dict[str, object]) -> str:
    out = [ARRIVALS_START, "## Arrival sensitivity", "",
           f"Generated by `.venv/bin/python bench/where_split_pays.py --arrivals` ({meta['date']}, {meta['cpus']} CPUs; "
           f"{meta['wall']:.0f} s). Do not edit by hand: rerun the command.", "",
           "The planner's saving against the tuned homogeneous fleet when a trace reaches the planned rate by "
           "each arrival model, with the burstiness each gives (variance over mean of arrivals per second, 1 = "
           "Poisson; all requests and those over 4K tokens). Superposed copies keep each second as bursty as "
           "the trace's own; the burstier fit takes, per pool, the largest dispersion over 1, 2, 5, 10 and 30 s "
           "windows (a stream bursty at several time scales); compressing time multiplies the trace's bursts by "
           "the speed-up and is shown for comparison only.", "",
           "| scenario | arrival model | burstiness all / over 4K | tuned GPUs | split GPUs (threshold) | "
           "saving vs tuned |", "|---|---|---|---|---|---|"]
    for key, entries in rows.items():
        for e in entries:
            out.append(f"| {key} | {e['model']} | {e['all']:.2f} / {e['over_4k']:.2f} | {e['tuned_gpus']:,} | "
                       f"{e['split_gpus']:,} ({e['threshold']}) | {e['saving']:.1%} |")
    out += ["", ARRIVALS_END]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", action="store_true", help="check each saving with the fleet simulator")
    parser.add_argument("--arrivals", action="store_true",
                        help="instead: the arrival sensitivity section (planner only, trace scenarios)")
    parser.add_argument("--only", help="comma-separated scenario keys")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--output", default=str(DOC))
    args = parser.parse_args()
    wall = time.perf_counter()
    wanted = set(args.only.split(",")) if args.only else None
    if args.arrivals:
        chosen = [sc for sc in SCENARIOS if sc.source.startswith("traces/") and (wanted is None or sc.key in wanted)]
        sens = {sc.key: arrival_sensitivity(sc, lambda m: print(m, file=sys.stderr, flush=True)) for sc in chosen}
        meta_a = {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(), "wall": time.perf_counter() - wall}
        write_section(render_arrivals(sens, meta_a), Path(args.output), ARRIVALS_START, ARRIVALS_END)
        print(json.dumps(sens) if args.json else f"wrote {args.output}")
        return 0
    rows = [evaluate(sc, args.sim, lambda m: print(m, file=sys.stderr, flush=True))
            for sc in SCENARIOS if wanted is None or sc.key in wanted]
    meta = {"date": dt.date.today().isoformat(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "wall": time.perf_counter() - wall, "sim": args.sim}
    write_section(render(rows, meta), Path(args.output))
    summary = [{"scenario": r["scenario"].key, "saving_vs_tuned": r["plan"].saving_fraction,  # type: ignore[attr-defined]
                "saving_vs_paper": r["plan"].saving_vs("paper"),  # type: ignore[attr-defined]
                "tuned_gpus": r["plan"].homogeneous.gpus, "split_gpus": r["plan"].dual_pool.gpus,  # type: ignore[attr-defined]
                "binding": r["plan"].binding_constraint,  # type: ignore[attr-defined]
                **({"sim_saving": r["sim"]["saving"]} if "sim" in r else {})} for r in rows]  # type: ignore[index]
    for s in summary:
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))
    print(f"wrote {args.output}")
    if args.json:
        print(json.dumps({"scenarios": summary, **meta}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
