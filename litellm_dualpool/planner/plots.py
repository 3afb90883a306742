"""PNG figures (matplotlib, Agg backend, no display needed). Of a fleet simulation: the budget
CDF with the pool thresholds, the planner's saving against the threshold, TTFT distributions per
pool, and preemptions per pool beside a baseline. Of a plan (``plan --plots``): its threshold
sweep as cost against the threshold, and the GPUs of each pool per threshold beside the
homogeneous baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from litellm_dualpool.planner.model import Plan
from litellm_dualpool.sim.fleet import Fate, FleetResult

FILES = ("budget_cdf.png", "savings_vs_threshold.png", "ttft_per_pool.png", "preemptions_per_pool.png")
#: The figures of ``plan --plots``.
PLAN_FILES = ("cost_vs_threshold.png", "gpus_per_pool.png")
#: Baselines drawn beside the sweep, with their legend names (planner.model.BASELINES).
_BASELINE_LABELS = {"tuned_homogeneous": "tuned homogeneous", "paper": "paper's homogeneous",
                    "vllm_default": "vLLM defaults"}


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def budget_cdf(result: FleetResult, thresholds: Sequence[int], path: Path) -> Path:
    budgets = np.sort(result.budget_tokens[result.budget_tokens > 0])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(budgets, np.arange(1, len(budgets) + 1) / max(len(budgets), 1), lw=1.5)
    for t in thresholds:
        share = float((budgets <= t).mean()) if len(budgets) else 0.0
        ax.axvline(t, color="tab:red", ls="--", lw=1)
        ax.annotate(f"{t} tok: {share:.1%}", (t, share), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="estimated budget (prompt estimate + max_tokens), tokens", ylabel="CDF",
           title="Token budgets and pool limits")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def savings_vs_threshold(points: Sequence[tuple[int, float, float]], path: Path) -> Path:
    """points: (threshold, discrete saving, closed-form saving)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = [p[0] for p in points]
    ax.plot(xs, [100 * p[1] for p in points], "o-", label="discrete sizing at the SLO")
    ax.plot(xs, [100 * p[2] for p in points], "s--", label="closed form alpha(1-1/rho)")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="short-pool max_model_len (tokens)", ylabel="saving vs homogeneous, %",
           title="Saving against the threshold (planner)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def ttft_per_pool(result: FleetResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    done = result.request_fate == Fate.COMPLETED
    for i, name in enumerate(result.pool_names):
        ttft = np.sort(result.ttft_seconds[done & (result.request_pool == i)])
        if len(ttft):
            ax.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft), label=f"{name} (n={len(ttft)})")
    ax.set_xscale("log")
    ax.set(xlabel="TTFT, s", ylabel="CDF", title="Time to first token per pool")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def preemptions_per_pool(results: Sequence[FleetResult], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels, values = [], []
    for r in results:
        for p in [*r.pools, r.fleet]:
            labels.append(f"{r.router}\n{p.name}")
            values.append(p.preemptions_per_1000)
    ax.bar(range(len(values)), values, color="tab:orange")
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set(ylabel="preemptions per 1000 requests", title="Preemptions per pool")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def write_all(result: FleetResult, directory: str | Path, *, thresholds: Sequence[int],
              savings: Sequence[tuple[int, float, float]],
              baselines: Sequence[FleetResult] = ()) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return [budget_cdf(result, thresholds, out / FILES[0]),
            savings_vs_threshold(savings, out / FILES[1]),
            ttft_per_pool(result, out / FILES[2]),
            preemptions_per_pool([result, *baselines], out / FILES[3])]


def cost_vs_threshold(plan: Plan, path: Path) -> Path:
    """The sweep's dual-pool cost per short-pool threshold against the homogeneous baselines;
    the recommended threshold starred, thresholds whose fleet misses the SLO hollow."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = [o.threshold for o in plan.sweep]
    ys = [o.fleet.usd_per_year / 1e6 for o in plan.sweep]
    ax.plot(xs, ys, "-", color="tab:blue", label="dual pool (sized at the SLO)")
    met = [(x, y) for x, y, o in zip(xs, ys, plan.sweep, strict=True) if o.fleet.slo_met]
    missed = [(x, y) for x, y, o in zip(xs, ys, plan.sweep, strict=True) if not o.fleet.slo_met]
    if met:
        ax.plot(*zip(*met, strict=True), "o", color="tab:blue")
    if missed:
        ax.plot(*zip(*missed, strict=True), "o", mfc="none", color="tab:blue", label="misses the SLO")
    for (name, fleet), style in zip(plan.baselines.items(), ("--", ":", "-."), strict=False):
        ax.axhline(fleet.usd_per_year / 1e6, ls=style, color="gray",
                   label=f"{_BASELINE_LABELS.get(name, name)} ({fleet.gpus} GPUs)")
    chosen = next((o for o in plan.sweep if o.threshold == plan.threshold), None)
    if chosen is not None:
        ax.plot([chosen.threshold], [chosen.fleet.usd_per_year / 1e6], "*", ms=14, color="tab:red",
                label=f"recommended: {chosen.threshold} tokens ({plan.saving_fraction:+.1%} vs tuned)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs], fontsize=8)
    ax.minorticks_off()
    ax.set(xlabel="short-pool max_model_len (tokens)", ylabel="cost, million USD per year",
           title=f"Cost against the threshold ({plan.rate_per_second:g} req/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def gpus_per_pool(plan: Plan, path: Path) -> Path:
    """Stacked GPUs per pool for each threshold of the sweep, then each homogeneous baseline."""
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    labels = [str(o.threshold) for o in plan.sweep]
    fleets = [o.fleet for o in plan.sweep]
    for name, fleet in plan.baselines.items():
        labels.append(_BASELINE_LABELS.get(name, name).replace(" ", "\n", 1))
        fleets.append(fleet)
    names = list(dict.fromkeys(p.name for f in fleets for p in f.pools))
    bottom = np.zeros(len(fleets))
    for name in names:
        heights = np.array([sum(p.gpus for p in f.pools if p.name == name) for f in fleets], float)
        ax.bar(range(len(fleets)), heights, bottom=bottom, label=name)
        bottom += heights
    for i, total in enumerate(bottom):
        ax.annotate(f"{int(total)}", (i, total), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(fleets)), labels, fontsize=7)
    ax.set(xlabel="short-pool max_model_len (tokens), then the homogeneous baselines",
           ylabel="GPUs", title="GPUs per pool")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plan(plan: Plan, directory: str | Path) -> list[Path]:
    """``plan --plots DIR``: the figures of `PLAN_FILES`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return [cost_vs_threshold(plan, out / PLAN_FILES[0]), gpus_per_pool(plan, out / PLAN_FILES[1])]
