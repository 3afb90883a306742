"""`litellm-dualpool simulate`: run one fleet simulation on a trace and print its report.

Examples::

    litellm-dualpool simulate --trace AzureLLMInferenceTrace_conv.csv --rate 1000 \\
        --gpu a100 --model llama-3-70b --tensor-parallel-size 4 \\
        --pool name=short,max_model_len=8192,max_num_seqs=128,max_num_batched_tokens=16384,instances=300 \\
        --pool name=long,max_model_len=65536,max_num_seqs=16,max_num_batched_tokens=8192,instances=60
    litellm-dualpool simulate --synthetic 20000 --rate 200 --router oracle --json

Without ``--pool`` it simulates the paper's dual-pool layout sized for the rate. ``--json``
prints one JSON object (``FleetResult.to_dict()``) on stdout and the table on stderr. A fleet that
meets the SLO for fewer than half of its requests is overloaded or undersized: a warning on
stderr says so (``litellm-dualpool plan`` sizes pools for a rate).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from litellm_dualpool.commands.common import (
    EXIT_UNAVAILABLE,
    add_hidden_alias,
    add_json_flag,
    add_slo_ttft_flag,
    parse_pool,
    require_modules,
    warn,
)
from litellm_dualpool.core.policy import PolicySettings
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.sim.engine import EngineConfig
from litellm_dualpool.sim.fleet import Balancer, FleetResult, SimPool, SloTargets, simulate
from litellm_dualpool.sim.routers import (
    OracleRouter,
    PolicyRouter,
    Router,
    SinglePoolRouter,
    StaticRatioRouter,
)
from litellm_dualpool.sim.workload import Workload, from_cdf, read_cdf_file, read_trace, synthetic

ROUTERS = ("dual_pool", "static_ratio", "oracle", "homogeneous")
#: --pool keys -> field (``tp`` is the old spelling of ``tensor_parallel_size``)
_POOL_KEYS = {k: k for k in ("name", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
                             "instances", "gpu_memory_utilization", "tensor_parallel_size",
                             "long_prefill_token_threshold")}
_POOL_KEYS["tp"] = "tensor_parallel_size"
#: below this fleet SLO attainment the run is reported as overloaded (a warning on stderr)
OVERLOAD_SLO_ATTAINMENT = 0.5
#: what --plots imports (matplotlib, from the [tools] extra): checked before simulating
PLOT_MODULES = ("matplotlib",)
#: Default layout (the paper's): per-instance shares of the rate for a default fleet.
_DEFAULT_POOLS = (
    "name=short,max_model_len=8192,max_num_seqs=128,max_num_batched_tokens=16384",
    "name=long,max_model_len=65536,max_num_seqs=16,max_num_batched_tokens=8192",
)


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--trace", help="trace file: Azure 2023 CSV, Mooncake JSONL, or CSV/JSONL "
                     "with timestamp/input/output columns")
    src.add_argument("--cdf", help="total-token CDF JSON ([[tokens, F], ...]); needs --requests")
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic log-normal requests")
    parser.add_argument("--rate", type=float, help="scale arrivals to this many requests/s")
    parser.add_argument("--requests", type=int, help="cut or repeat the workload to N requests")
    parser.add_argument("--gpu", default="a100")
    parser.add_argument("--model", default="llama-3-70b")
    parser.add_argument("--tensor-parallel-size", "-tp", dest="tensor_parallel_size", type=int,
                        default=4, help="GPUs per instance (default %(default)s)")
    add_hidden_alias(parser, "--tp", dest="tensor_parallel_size", value_type=int,
                     new="--tensor-parallel-size")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "fp8"])
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "bfloat16", "fp8"])
    parser.add_argument("--pool", action="append", metavar="KEY=VALUE,...",
                        help="a pool: NAME=MAX_MODEL_LEN, or KEY=VALUE,... with name, "
                        "max_model_len, max_num_seqs, max_num_batched_tokens, instances[, "
                        "gpu_memory_utilization, tensor_parallel_size, long_prefill_token_threshold] (repeatable)")
    parser.add_argument("--router", choices=ROUTERS, default="dual_pool")
    parser.add_argument("--balancer", choices=[b.value for b in Balancer], default="least_loaded")
    parser.add_argument("--max-tokens", type=int, help="clients' max_tokens (default: each "
                        "request's true output length)")
    parser.add_argument("--spillover", type=float, default=0.9,
                        help="pool load fraction that triggers spillover (<= 0 disables)")
    parser.add_argument("--no-recovery", action="store_true",
                        help="do not retry a context-length 400 on a larger pool")
    add_slo_ttft_flag(parser)
    parser.add_argument("--slo-tpot", type=float, default=0.080, help="seconds")
    parser.add_argument("--price", type=float, help="USD per GPU-hour (default: catalogue)")
    parser.add_argument("--seed", type=int, default=0)
    add_json_flag(parser, "print one JSON object on stdout; the table goes to stderr")
    configure_reporting(parser)


def configure_reporting(parser: argparse.ArgumentParser) -> None:
    """Progress bar, baseline runs and figures."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--baseline", action="store_true",
                        help="also simulate a homogeneous fleet of the largest pool's configuration "
                        "with the same number of GPUs")
    parser.add_argument("--plots", metavar="DIR", help="write PNG figures (budget CDF, savings vs "
                        "threshold, TTFT per pool, preemptions per pool) to DIR")


def pool_fields(text: str, index: int) -> dict[str, str]:
    """One --pool value as fields (the CLI-wide syntax, see commands.common.parse_pool)."""
    try:
        return parse_pool(text, _POOL_KEYS, index=index)
    except ValueError as exc:
        raise ConfigError(str(exc), path=f"pool[{index}]") from None


def build_pools(args: argparse.Namespace, rate: float) -> list[SimPool]:
    texts = args.pool or list(_DEFAULT_POOLS)
    pools = []
    for i, text in enumerate(texts):
        f = pool_fields(text, i)
        cfg = EngineConfig(
            args.gpu, args.model,
            tensor_parallel_size=int(f.get("tensor_parallel_size", args.tensor_parallel_size)),
            max_model_len=int(f.get("max_model_len", 8192)), max_num_seqs=int(f.get("max_num_seqs", 128)),
            max_num_batched_tokens=int(f.get("max_num_batched_tokens", 8192)),
            gpu_memory_utilization=float(f.get("gpu_memory_utilization", 0.9)),
            long_prefill_token_threshold=int(f.get("long_prefill_token_threshold", 0)),
            dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype)
        # without an explicit count: the paper's per-instance rates (11.2 short, 2.8 long) at
        # 95% / 5% of the traffic; a starting point, not a plan (see `litellm-dualpool plan`)
        default = math.ceil(rate * (0.95 / 11.2 if i == 0 else 0.05 / 2.8)) if len(texts) > 1 else math.ceil(rate / 2.8)
        pools.append(SimPool(f["name"], cfg, int(f.get("instances", max(default, 1))), args.price))
    return pools


def load_workload(args: argparse.Namespace) -> Workload:
    if args.trace:
        workload = read_trace(args.trace)
    elif args.cdf:
        workload = from_cdf(read_cdf_file(args.cdf), args.requests or 10000, args.rate or 10.0, seed=args.seed)
    else:
        workload = synthetic(args.synthetic or 10000, args.rate or 10.0, seed=args.seed)
    if args.requests:
        workload = workload.resized(args.requests)
    if args.rate:
        workload = workload.scaled_to_rate(args.rate)
    return workload


def make_router(name: str, pools: Sequence[SimPool], spillover: float, model_group: str) -> Router:
    settings = PolicySettings(spillover_load_fraction=spillover if spillover > 0 else None)
    if name == "homogeneous":
        return SinglePoolRouter(max(pools, key=lambda p: p.engine.max_model_len).name)
    if name == "oracle":
        return OracleRouter(settings, model_group=model_group)
    if name == "static_ratio":
        return StaticRatioRouter(settings, model_group=model_group)
    return PolicyRouter(settings, model_group=model_group)


def render(result: FleetResult) -> str:
    cols = ("pool", "inst", "GPUs", "$/year", "req", "done", "refused", "req/s", "TTFT p50",
            "TTFT p99", "TPOT p50", "TPOT p99", "preempt/1k", "KV use", "SLO")
    rows = [cols]
    for p in [*result.pools, result.fleet]:
        usd = "-" if p.usd_per_year is None else f"{p.usd_per_year / 1e6:.2f}M"
        rows.append((p.name, str(p.instances), str(p.gpus), usd, str(p.requests), str(p.completed),
                     str(p.refused), f"{p.requests_per_second:.1f}", f"{p.ttft_p50_seconds:.3f}",
                     f"{p.ttft_p99_seconds:.3f}", f"{p.tpot_p50_seconds * 1e3:.1f}ms",
                     f"{p.tpot_p99_seconds * 1e3:.1f}ms", f"{p.preemptions_per_1000:.1f}",
                     f"{p.kv_usage_mean_ratio:.1%}", f"{p.slo_attainment:.2%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(f"router={result.router} balancer={result.balancer} requests={result.requests} "
                 f"refused_gateway={result.refused_gateway} refused_backend={result.refused_backend} "
                 f"recovered={result.recovered} truncated={result.truncated} "
                 f"simulated={result.horizon_seconds:.1f}s wall={result.wall_seconds:.1f}s")
    if result.slo_attainment_by_class:
        lines.append("SLO attainment by request class: " + ", ".join(
            f"{name} {value:.2%}" for name, value in result.slo_attainment_by_class.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    # the figures need matplotlib: say so before a simulation that may take minutes
    if getattr(args, "plots", None) and not require_modules("simulate", PLOT_MODULES,
                                                            purpose="--plots"):
        return EXIT_UNAVAILABLE
    try:
        workload = load_workload(args)
        pools = build_pools(args, workload.rate_per_second)
        router = make_router(args.router, pools, args.spillover, args.model)
    except ConfigError as exc:
        print(f"litellm-dualpool simulate: {exc}", file=sys.stderr)
        return 2
    text = sys.stderr if args.json else sys.stdout  # --json: stdout carries the JSON alone
    try:
        slo = _slo_targets(args)
    except ConfigError as exc:
        print(f"litellm-dualpool simulate: {exc}", file=sys.stderr)
        return 2
    result = simulate_with_progress(workload, pools, router, args, slo, label=args.router)
    print(render(result), file=text)
    warn_if_overloaded(result)
    baselines = []
    if getattr(args, "baseline", False) and len(pools) > 1:
        homogeneous = homogeneous_pools(pools)
        baselines.append(simulate_with_progress(workload, homogeneous, make_router(
            "homogeneous", homogeneous, args.spillover, args.model), args, slo, label="homogeneous"))
        print(render(baselines[0]), file=text)
    payload = result.to_dict()
    if baselines:
        payload["baselines"] = [b.to_dict() for b in baselines]
    if getattr(args, "plots", None):
        written = [str(p) for p in write_plots(result, baselines, workload, pools, args)]
        payload["plots"] = written
        for path in written:
            print(f"wrote {path}", file=text)
    if args.json:
        print(json.dumps(payload, separators=(",", ":")))
    return 0


def warn_if_overloaded(result: FleetResult) -> None:
    """A fleet that misses the SLO for most requests measures its queue, not the routing: say so
    (on stderr), since the default pools are sized from the paper's rates, not from this load."""
    attainment = result.fleet.slo_attainment
    if attainment < OVERLOAD_SLO_ATTAINMENT:
        warn("simulate", f"the fleet met the SLO for only {attainment:.1%} of requests: it is "
             "overloaded or undersized for this rate; size the pools with `litellm-dualpool "
             "plan` or set instances= in --pool")


def _slo_targets(args: argparse.Namespace) -> SloTargets:
    from litellm_dualpool.planner.model import Slo

    return Slo.parse(str(args.slo_ttft), args.slo_tpot).sim_targets()


def simulate_with_progress(workload: Workload, pools: Sequence[SimPool], router: Router,
                           args: argparse.Namespace, slo: SloTargets, *, label: str) -> FleetResult:
    """``simulate`` with a rich progress bar on stderr (unless --no-progress)."""
    kwargs = dict(balancer=args.balancer, max_tokens=args.max_tokens, recovery=not args.no_recovery,
                  seed=args.seed, slo=slo)
    if getattr(args, "no_progress", True):
        return simulate(workload, pools, router, **kwargs)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"simulating {label}", total=len(workload))
        return simulate(workload, pools, router, progress=lambda done, _n: bar.update(task, completed=done),
                        **kwargs)


def homogeneous_pools(pools: Sequence[SimPool]) -> list[SimPool]:
    """The largest pool's configuration with as many instances as the split fleet's GPUs allow."""
    largest = max(pools, key=lambda p: p.engine.max_model_len)
    gpus = sum(p.instances * p.engine.num_gpus for p in pools)
    return [SimPool("homogeneous", largest.engine, max(gpus // largest.engine.num_gpus, 1),
                     largest.usd_per_gpu_hour)]


def write_plots(result: FleetResult, baselines: Sequence[FleetResult], workload: Workload,
                pools: Sequence[SimPool], args: argparse.Namespace) -> list[object]:
    """The four figures; the savings curve comes from the planner on the same workload."""
    from litellm_dualpool.planner import plots
    from litellm_dualpool.planner.model import (
        DEFAULT_THRESHOLDS,
        Hardware,
        LengthMix,
        Planner,
        Slo,
        make_plan,
    )

    engine = pools[0].engine
    hardware = Hardware.build(engine.gpu, engine.model, tensor_parallel_size=engine.tensor_parallel_size,
                              dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
                              usd_per_gpu_hour=pools[0].price or 1.0)
    planner = Planner(LengthMix.from_workload(workload), workload.rate_per_second, hardware,
                      slo=Slo.parse(str(args.slo_ttft), args.slo_tpot),
                      long_max_model_len=max(p.engine.max_model_len for p in pools))
    plan = make_plan(planner, DEFAULT_THRESHOLDS, max_pools=2)
    savings = [(o.threshold, o.saving_fraction, o.closed_form_saving_fraction) for o in plan.sweep]
    limits = sorted(p.engine.max_model_len for p in pools)[:-1] or [pools[0].engine.max_model_len]
    return list(plots.write_all(result, args.plots, thresholds=limits, savings=savings, baselines=baselines))
