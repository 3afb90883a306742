"""The demo's report: metrics parsing, percentiles, the summary's bookkeeping."""

from __future__ import annotations

import pytest

from litellm_dualpool.demo import report as rpt
from litellm_dualpool.demo.replay import Outcome, Status
from litellm_dualpool.demo.workload import Category, Kind, RequestSpec

EXPOSITION = """\
# HELP dualpool_requests_total Routing decisions by model group, pool and reason.
# TYPE dualpool_requests_total counter
dualpool_requests_total{model_group="g",pool="short",reason="fits"} 7.0
dualpool_requests_total{model_group="g",pool="long",reason="fits"} 2.0
dualpool_requests_total{model_group="g",pool="long",reason="misroute_recovery"} 1.0
dualpool_requests_created{model_group="g",pool="short",reason="fits"} 1.7e+09
# HELP dualpool_misroutes_total x
# TYPE dualpool_misroutes_total counter
dualpool_misroutes_total{model_group="g",pool="short"} 1.0
# HELP dualpool_misroutes_recovered_total x
# TYPE dualpool_misroutes_recovered_total counter
dualpool_misroutes_recovered_total{model_group="g",from_pool="short",to_pool="long"} 1.0
# HELP dualpool_refusals_total x
# TYPE dualpool_refusals_total counter
dualpool_refusals_total{model_group="g",reason="fits_nowhere"} 1.0
# HELP dualpool_learned_bytes_per_token x
# TYPE dualpool_learned_bytes_per_token gauge
dualpool_learned_bytes_per_token{category="prose",model_group="g"} 4.5123
dualpool_learned_bytes_per_token{category="cjk",model_group="g"} 3.4
# HELP dualpool_learning_samples_total x
# TYPE dualpool_learning_samples_total counter
dualpool_learning_samples_total{model_group="g",outcome="learned"} 3.0
dualpool_learning_samples_total{model_group="g",outcome="rejected"} 1.0
"""


def _spec(index: int, kind: Kind = Kind.TYPICAL, prompt: int = 1000) -> RequestSpec:
    return RequestSpec(index, float(index), Category.PROSE, kind, prompt, 100, False)


def _ok(index: int, pool: str | None, latency_s: float) -> Outcome:
    return Outcome(_spec(index), Status.OK, pool, None, latency_s, 1000, 100)


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([], 50, None),
    ([0.5], 99, 500.0),
    ([0.1, 0.2, 0.3, 0.4], 50, 200.0),
    ([float(i) / 1000 for i in range(1, 101)], 99, 99.0),
])
def test_nearest_rank_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert rpt.percentile_ms(values, q) == expected


def test_summary_joins_client_outcomes_with_plugin_metrics() -> None:
    metrics = rpt.parse_metrics(EXPOSITION)
    specs = [_spec(i) for i in range(5)] + [_spec(5, Kind.OVERSIZE, 90_000)]
    outcomes = [_ok(0, "short", 0.1), _ok(1, "short", 0.3), _ok(2, "long", 2.0),
                _ok(3, None, 0.2),
                Outcome(specs[4], Status.LOST, None, None, 1.0, None, None, "APIError: boom"),
                Outcome(specs[5], Status.REFUSED, None, None, 0.01, None, None, "400")]
    saving = rpt.closed_form_saving(specs, 8192)
    summary = rpt.summary(specs=specs, outcomes=outcomes, metrics=metrics,
                          pool_instances={"short": 2, "long": 1}, snapshots=[], saving=saving,
                          true_ratios={"prose": 4.54}, wall_s=12.0)
    assert (summary["requests"], summary["ok"], summary["refused"], summary["lost"]) == (6, 4, 1, 1)
    assert summary["pools"]["short"] == {"instances": 2, "requests": 2, "p50_ms": 100.0,
                                         "p99_ms": 300.0}
    assert summary["pools"]["long"]["requests"] == 1
    assert summary["unknown_pool"] == 1
    assert summary["reasons"] == {"long/fits": 2, "long/misroute_recovery": 1, "short/fits": 7}
    assert (summary["misroutes"], summary["misroutes_recovered"], summary["refusals"]) == (1, 1, 1)
    assert summary["misroutes_recovered_by_route"] == {"short->long": 1}
    assert summary["learned_bytes_per_token"] == {"prose": 4.512, "cjk": 3.4}
    assert summary["learning_samples"] == {"learned": 3, "rejected": 1}
    assert summary["lost_examples"] == [{"index": 4, "kind": "typical", "error": "APIError: boom"}]
    # 5 of 6 requests fit 8192 tokens: alpha 5/6, rho 4
    assert summary["predicted_saving_fraction"] == pytest.approx(5 / 6 * 0.75, abs=1e-4)


def test_planner_prediction_leaves_the_probes_out() -> None:
    specs = [_spec(i, prompt=500 + 50 * i) for i in range(40)]
    probes = [_spec(40, Kind.LONG, 30_000), _spec(41, Kind.OVERSIZE, 90_000)]
    planned = rpt.predicted_saving(specs + probes, 8192)
    assert planned["source"].startswith("planner: 40 trace-statistics requests")
    assert planned["alpha"] == 1.0  # every typical request fits the short pool
    assert planned["gpus"]["homogeneous"] > 0 and planned["gpus"]["dual_pool"] > 0
    # the paper's closed form covers the same 40 requests as the planner's alpha
    assert planned["closed_form_paper_rho_alpha"] == planned["alpha"]
    assert planned["baseline"].startswith("tuned homogeneous fleet (4x a100")
    assert planned["binding_constraint"].split(":")[0] in ("short", "long")
    assert planned["gpus"]["homogeneous"] <= planned["gpus"]["paper"]
