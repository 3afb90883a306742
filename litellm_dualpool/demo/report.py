"""The demo's report: client-side outcomes joined with the gateway's ``dualpool_*`` metrics.

Per-pool request counts and latencies come from what the client saw (the serving backend named
by ``x-litellm-model-api-base``); reasons, misroutes, spillovers, refusals and the learned
bytes-per-token ratios come from the plugin's Prometheus metrics on the proxy's ``/metrics``.
``summary`` builds one JSON-ready dict (the demo's last output line); ``render`` prints it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from litellm_dualpool.demo.replay import Outcome, Status
from litellm_dualpool.demo.workload import RequestSpec

#: the paper's measured per-instance throughputs, Llama-3-70B on A100 (REFERENCE §1):
#: short-configured (8K ctx, 128 seqs) 11.2 req/s, long-configured (64K, 16 seqs) 2.8 req/s
PAPER_SHORT_RPS, PAPER_LONG_RPS = 11.2, 2.8


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition."""
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.append(Sample(sample.name, dict(sample.labels), float(sample.value)))
    return samples


def total(samples: Iterable[Sample], name: str, **match: str) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in match.items()))


def by_labels(samples: Iterable[Sample], name: str, *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for s in samples:
        if s.name == name:
            out[tuple(s.labels.get(k, "") for k in keys)] += s.value
    return dict(out)


def learned_ratios(samples: Iterable[Sample]) -> dict[str, float]:
    """category -> learned bytes per token (the plugin's gauge)."""
    return {key[0]: round(value, 3) for key, value in
            by_labels(samples, "dualpool_learned_bytes_per_token", "category").items()}


@dataclass(frozen=True, slots=True)
class RatioSnapshot:
    """Learned ratios after ``completed`` requests had finished."""

    completed: int
    elapsed_s: float
    ratios: Mapping[str, float]


def percentile_ms(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return round(ordered[rank - 1] * 1000.0, 1)


#: the planner sizes fleets at the paper's headline scale, not at the demo's few requests/s
#: (at 5 req/s every pool is one instance and ceilings decide everything)
PLAN_RATE_PER_S = 1000.0


def closed_form_saving(specs: Sequence[RequestSpec], short_limit_tokens: int) -> dict[str, Any]:
    """The paper's ``alpha * (1 - 1/rho)`` for this workload: alpha the share of requests whose
    total (prompt + max output) fits the short pool, rho = 11.2 / 2.8 (REFERENCE §1). It drops
    the per-pool ceilings, so it over-estimates savings for small or heavy-tailed fleets."""
    alpha = sum(s.total_tokens <= short_limit_tokens for s in specs) / max(1, len(specs))
    rho = PAPER_SHORT_RPS / PAPER_LONG_RPS
    return {"fraction": round(alpha * (1.0 - 1.0 / rho), 4), "alpha": round(alpha, 4),
            "rho": rho, "source": "closed form alpha*(1-1/rho), rho=11.2/2.8 (the paper's A100 "
                                  "per-instance throughputs)"}


def planned_saving(specs: Sequence[RequestSpec], short_limit_tokens: int, *,
                   gpu: str = "a100", model: str = "llama-3-70b",
                   tensor_parallel_size: int = 4) -> dict[str, Any]:
    """The planner's prediction (engine-model throughputs, discrete sizing, SLO check) for the
    workload's trace-statistics requests at PLAN_RATE_PER_S, with the short pool at the demo's
    limit, against the tuned homogeneous fleet (the same GPU and TP, flags searched; the paper's
    16-sequence fleet beside it). The demo's deliberate probes (long, borderline, oversize
    requests) are left out: they are there to exercise the gateway, not to describe traffic; the
    paper's closed form is computed on the same requests, so both alphas are one figure."""
    import numpy as np

    from litellm_dualpool.demo.workload import Kind
    from litellm_dualpool.planner.model import (
        Hardware,
        LengthMix,
        Planner,
        SearchSpace,
        Slo,
        make_plan,
    )

    traffic = [s for s in specs if s.kind is Kind.TYPICAL] or [
        s for s in specs if s.kind is not Kind.OVERSIZE]
    mix = LengthMix(np.array([s.prompt_tokens for s in traffic], dtype=np.int64),
                    np.array([s.max_tokens for s in traffic], dtype=np.int64),
                    np.array([s.arrival_s for s in traffic], dtype=np.float64))
    slo = Slo()
    hardware = Hardware.build(gpu, model, tensor_parallel_size=tensor_parallel_size)
    planner = Planner(mix, PLAN_RATE_PER_S, hardware, slo=slo,
                      search=SearchSpace((hardware,), (tensor_parallel_size,)))
    plan = make_plan(planner, [short_limit_tokens], max_pools=2)
    closed = closed_form_saving(traffic, short_limit_tokens)
    tuned = plan.homogeneous.pools[0]
    return {
        "fraction": round(plan.saving_fraction, 4),
        "baseline": (f"tuned homogeneous fleet ({tuned.hardware.label if tuned.hardware else '-'}, "
                     f"{tuned.flags.max_num_seqs} seqs, {tuned.flags.max_num_batched_tokens} batched tokens)"),
        "saving_vs_paper_fraction": round(plan.saving_vs("paper"), 4),
        "binding_constraint": plan.binding_constraint,
        "source": (f"planner: {len(traffic)} trace-statistics requests at {PLAN_RATE_PER_S:.0f} "
                   f"req/s, {model} on {gpu} TP{tensor_parallel_size}, P99 TTFT <= "
                   f"{slo.ttft_p99_seconds} s, P99 TPOT <= {slo.tpot_p99_seconds * 1000:.0f} ms"),
        "alpha": round(plan.alpha, 4),
        "rho_engine_model": round(plan.rho, 3),
        "closed_form_engine_rho": round(plan.closed_form_saving_fraction, 4),
        "gpus": {"homogeneous": plan.homogeneous.gpus, "dual_pool": plan.dual_pool.gpus,
                 "paper": plan.baselines["paper"].gpus},
        "slo_met": {"homogeneous": plan.homogeneous.slo_met, "dual_pool": plan.dual_pool.slo_met},
        "closed_form_paper_rho": closed["fraction"],
        "closed_form_paper_rho_alpha": closed["alpha"],
    }


def predicted_saving(specs: Sequence[RequestSpec], short_limit_tokens: int) -> dict[str, Any]:
    """The planner's prediction; the closed form alone if the planner cannot plan this mix."""
    from litellm_dualpool.errors import ConfigError

    try:
        return planned_saving(specs, short_limit_tokens)
    except (ConfigError, ValueError) as exc:
        closed = closed_form_saving(specs, short_limit_tokens)
        closed["source"] += f"; the planner failed: {exc}"
        return closed


def summary(*, specs: Sequence[RequestSpec], outcomes: Sequence[Outcome],
            metrics: Sequence[Sample], pool_instances: Mapping[str, int],
            snapshots: Sequence[RatioSnapshot], saving: Mapping[str, Any],
            true_ratios: Mapping[str, float], wall_s: float,
            backend_metrics: Mapping[str, Sequence[Sample]] | None = None) -> dict[str, Any]:
    status = Counter(o.status for o in outcomes)
    pools: dict[str, Any] = {}
    for pool in sorted(pool_instances):
        served = [o for o in outcomes if o.status is Status.OK and o.pool == pool]
        latencies = [o.latency_s for o in served]
        pools[pool] = {"instances": pool_instances[pool], "requests": len(served),
                       "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99)}
    unknown = sum(o.status is Status.OK and o.pool not in pool_instances for o in outcomes)
    reasons = {f"{pool}/{reason}": int(v) for (pool, reason), v in
               sorted(by_labels(metrics, "dualpool_requests_total", "pool", "reason").items())}
    recovered = by_labels(metrics, "dualpool_misroutes_recovered_total", "from_pool", "to_pool")
    spill = by_labels(metrics, "dualpool_spillovers_total", "from_pool", "to_pool")
    lost = [o for o in outcomes if o.status is Status.LOST]
    prompt_errors = [abs(o.prompt_tokens - o.spec.prompt_tokens) / o.spec.prompt_tokens
                     for o in outcomes if o.status is Status.OK and o.prompt_tokens]
    result: dict[str, Any] = {
        "requests": len(outcomes),
        "ok": status[Status.OK],
        "refused": status[Status.REFUSED],
        "lost": status[Status.LOST],
        "pools": pools,
        "unknown_pool": unknown,
        "reasons": reasons,
        "misroutes": int(total(metrics, "dualpool_misroutes_total")),
        "misroutes_recovered": int(sum(recovered.values())),
        "misroutes_recovered_by_route": {f"{a}->{b}": int(v) for (a, b), v in recovered.items()},
        "spillovers": int(sum(spill.values())),
        "refusals": int(total(metrics, "dualpool_refusals_total")),
        "learned_bytes_per_token": learned_ratios(metrics),
        "learning_samples": {key[0]: int(v) for key, v in sorted(
            by_labels(metrics, "dualpool_learning_samples_total", "outcome").items())},
        "true_bytes_per_token": dict(true_ratios),
        "learned_over_time": [{"completed": s.completed, "elapsed_s": round(s.elapsed_s, 1),
                               "ratios": dict(s.ratios)} for s in snapshots],
        "workload": {
            "by_kind": dict(Counter(s.kind.value for s in specs)),
            "by_category": dict(Counter(s.category.value for s in specs)),
            # backend-reported prompt tokens against the synthesizer's target (small tool-call
            # requests cannot be smaller than one tool definition in the model's template)
            "prompt_tokens_within_2pct_of_target": round(
                sum(e <= 0.02 for e in prompt_errors) / len(prompt_errors), 4)
            if prompt_errors else None,
        },
        "predicted_saving_fraction": saving["fraction"],
        "predicted_saving": dict(saving),
        "lost_examples": [{"index": o.spec.index, "kind": o.spec.kind.value, "error": o.error}
                          for o in lost[:5]],
        "wall_s": round(wall_s, 1),
    }
    if backend_metrics:
        result["backends"] = {
            name: {"preemptions": int(total(samples, "vllm:num_preemptions_total")),
                   "prompt_tokens": int(total(samples, "vllm:prompt_tokens_total")),
                   "generation_tokens": int(total(samples, "vllm:generation_tokens_total"))}
            for name, samples in backend_metrics.items()}
    return result


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def render(report: Mapping[str, Any], console: Console) -> None:
    """The human part of the report (the JSON line is printed by the caller)."""
    console.rule("[bold]litellm-dualpool demo: report")
    console.print(f"requests {report['requests']}: ok {report['ok']}, refused {report['refused']} "
                  f"(larger than every pool), [bold]lost {report['lost']}[/bold]; "
                  f"wall {report['wall_s']} s")
    pools = Table(title="served by pool (client-side latency, send to last byte)")
    for column in ("pool", "instances", "requests", "P50 ms", "P99 ms"):
        pools.add_column(column, justify="right" if column != "pool" else "left")
    for name, pool in report["pools"].items():
        pools.add_row(name, str(pool["instances"]), str(pool["requests"]),
                      _fmt(pool["p50_ms"]), _fmt(pool["p99_ms"]))
    console.print(pools)
    if report["reasons"]:
        reasons = Table(title="routing decisions (dualpool_requests_total)")
        reasons.add_column("pool/reason")
        reasons.add_column("requests", justify="right")
        for key, value in report["reasons"].items():
            reasons.add_row(key, str(value))
        console.print(reasons)
    console.print(f"misroutes {report['misroutes']}, recovered {report['misroutes_recovered']} "
                  f"{report['misroutes_recovered_by_route'] or ''}; spillovers "
                  f"{report['spillovers']}; refusals {report['refusals']}")
    console.print("learning samples (dualpool_learning_samples_total): "
                  + (", ".join(f"{k} {v}" for k, v in report["learning_samples"].items()) or "none"))
    _render_ratios(report, console)
    saving = report["predicted_saving"]
    baseline = saving.get("baseline", "homogeneous fleet")
    console.print(f"predicted saving for this workload's traffic: [bold]{saving['fraction']:.1%}"
                  f"[/bold] of the {baseline}'s cost ({saving['source']})")
    if "gpus" in saving:
        console.print(f"  GPUs {baseline} {saving['gpus']['homogeneous']} -> dual-pool "
                      f"{saving['gpus']['dual_pool']} (SLO met: {saving['slo_met']}); binding constraint "
                      f"{saving['binding_constraint']}; against the paper's 16-sequence fleet "
                      f"({saving['gpus']['paper']} GPUs) {saving['saving_vs_paper_fraction']:.1%}")
        console.print(f"  alpha {saving['alpha']} (the same requests throughout), rho as goodput at the SLO "
                      f"{saving['rho_engine_model']} -> closed form {saving['closed_form_engine_rho']:.1%}; "
                      f"the paper's closed form with rho 4.0 would say {saving['closed_form_paper_rho']:.1%}")
    for example in report["lost_examples"]:
        console.print(f"[red]lost[/red] #{example['index']} ({example['kind']}): {example['error']}")


def _render_ratios(report: Mapping[str, Any], console: Console) -> None:
    history = report["learned_over_time"]
    categories = sorted({c for snap in history for c in snap["ratios"]}
                        | set(report["learned_bytes_per_token"]))
    if not categories:
        console.print("learned bytes/token: none reported by the gateway")
        return
    table = Table(title="learned bytes per token (dualpool_learned_bytes_per_token) over time")
    table.add_column("after requests", justify="right")
    for category in categories:
        table.add_column(category, justify="right")
    for snap in history:
        table.add_row(str(snap["completed"]), *(_fmt(snap["ratios"].get(c)) for c in categories))
    table.add_row("final", *(_fmt(report["learned_bytes_per_token"].get(c)) for c in categories))
    console.print(table)
    truth = report["true_bytes_per_token"]
    if truth:
        console.print("corpus bytes/token by the exact tokenizer (text only, no template): "
                      + ", ".join(f"{k} {v}" for k, v in truth.items()))
