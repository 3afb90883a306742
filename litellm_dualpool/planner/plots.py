"""PNG figures of a fleet simulation (matplotlib, Agg backend, no display needed): the budget
CDF with the pool thresholds, the planner's saving against the threshold, TTFT distributions per
pool, and preemptions per pool beside a baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from litellm_dualpool.sim.fleet import Fate, FleetResult

FILES = ("budget_cdf.png", "savings_vs_threshold.png", "ttft_per_pool.png", "preemptions_per_pool.png")


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
