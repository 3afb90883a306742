"""`litellm-dualpool plan`: size a homogeneous and a split fleet for a workload, pick the
threshold, print the plan (rich table; ``--json``: one JSON object on the last line) and, with
``--emit-config DIR``, write the LiteLLM YAML and the vLLM commands per pool.

Examples::

    litellm-dualpool plan --trace AzureLLMInferenceTrace_conv.csv --rate 1000 --gpu a100 \\
        --model llama-3-70b --json
    litellm-dualpool plan --prompt-percentiles 50=1020,90=2734,99=4142,100=14050 \\
        --output-percentiles 50=129,90=424,99=601,100=1000 --rate 1000
    litellm-dualpool plan --trace conv.csv --rate 1000 --thresholds 8192 --short-throughput 11.2 --long-throughput 2.8
    litellm-dualpool plan --trace conv.csv --rate 1000 --thresholds 8192 --short-bench short.json --long-bench long.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from litellm_dualpool.commands.common import (
    EXIT_UNAVAILABLE,
    add_hidden_alias,
    add_slo_ttft_flag,
    require_modules,
)
from litellm_dualpool.errors import ConfigError
from litellm_dualpool.planner.model import (
    DEFAULT_LONG_MAX_MODEL_LEN,
    DEFAULT_LONG_MAX_NUM_SEQS,
    DEFAULT_THRESHOLDS,
    DEFAULT_UTILISATION,
    Hardware,
    LengthMix,
    Plan,
    Planner,
    PoolPlan,
    SearchSpace,
    Slo,
    make_plan,
)
from litellm_dualpool.planner.vllm_bench import read_vllm_bench
from litellm_dualpool.sim.catalog import (
    GIB,
    PCIE4_X16_BYTES_PER_SECOND,
    GpuSpec,
    ModelSpec,
    get_gpu,
    get_model,
)
from litellm_dualpool.sim.workload import read_trace


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", help="trace file (Azure 2023 CSV, Mooncake JSONL, generic CSV/JSONL)")
    src.add_argument("--prompt-percentiles", metavar="Q=TOKENS,...",
                     help="prompt length percentiles, e.g. 50=1020,90=2734,99=4142,100=14050")
    parser.add_argument("--output-percentiles", metavar="Q=TOKENS,...", default="50=128,90=400,100=1000",
                        help="output length percentiles (with --prompt-percentiles)")
    parser.add_argument("--rate", type=float, help="requests/s to plan for (default: the trace's)")
    parser.add_argument("--arrivals", choices=["superpose", "burst", "compress"], default="superpose",
                        help="how a trace reaches --rate: independent time-shifted copies of it (default; "
                             "each second as bursty as the trace's own), the same copies with the burstiness of "
                             "the worst of 1-30 s windows (a burstier fit), or compressed time (far burstier)")
    parser.add_argument("--gpu", default="a100",
                        help="catalogue GPU, or several the search may use per pool (a100,h100,l40s; known: "
                             "a100, h100, h200, mi300x, mi325x, l40s, l4); the first is the paper and "
                             "vllm_default baselines' GPU")
    parser.add_argument("--gpu-spec", metavar="KEY=VALUE,...",
                        help="custom GPU: memory_gib, bandwidth_tbps, bf16_tflops[, fp8=1, name, price, "
                             "interconnect_gbps (per direction; default PCIe Gen4 x16, 32)]")
    parser.add_argument("--model", default="llama-3-70b", help="catalogue model")
    parser.add_argument("--model-spec", metavar="KEY=VALUE,...",
                        help="custom dense model: layers, hidden, heads, kv_heads, head_dim, params_b[, name]")
    parser.add_argument("--tensor-parallel-size", "-tp", dest="tensor_parallel_size", type=int,
                        help="tensor parallel size of every pool, as vLLM's flag (default: searched "
                             "per pool; the baselines use the smallest whose KV cache holds 4 long "
                             "sequences)")
    add_hidden_alias(parser, "--tp", dest="tensor_parallel_size", value_type=int,
                     new="--tensor-parallel-size")
    parser.add_argument("--no-search", action="store_true",
                        help="keep every pool on the first GPU with the derived flags (the paper's method)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "fp8"])
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "bfloat16", "fp8"])
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--price", metavar="USD|GPU=USD,...",
                        help="USD per GPU-hour: one figure (one GPU) or per GPU, e.g. a100=1.9,l40s=0.9 "
                             "(default: catalogue price)")
    add_slo_ttft_flag(parser)
    parser.add_argument("--slo-tpot", type=float, default=0.080, help="P99 TPOT target, seconds")
    parser.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION,
                        help="utilisation cap per pool (share of saturation throughput)")
    parser.add_argument("--thresholds", default=",".join(map(str, DEFAULT_THRESHOLDS)),
                        help="short-pool max_model_len candidates")
    parser.add_argument("--max-pools", type=int, default=3, help="show the gain of up to N pools")
    parser.add_argument("--long-max-model-len", type=int, default=DEFAULT_LONG_MAX_MODEL_LEN)
    parser.add_argument("--long-max-num-seqs", type=int, default=DEFAULT_LONG_MAX_NUM_SEQS)
    for role in ("short", "long"):
        measured = parser.add_mutually_exclusive_group()
        measured.add_argument(f"--{role}-throughput", type=float, metavar="REQ_S",
                              help=f"measured req/s of one {role}-configured instance (replaces the "
                                   "engine model and the SLO check for that pool"
                                   + (" and the homogeneous fleet)" if role == "long" else ")"))
        measured.add_argument(f"--{role}-bench", metavar="FILE",
                              help=f"the same, read from `vllm bench serve --request-rate inf "
                                   f"--save-result` run against one {role}-configured instance; "
                                   "the plan compares its mean lengths with the pool's")
    parser.add_argument("--no-slo-check", action="store_true", help="size by the utilisation cap only")
    parser.add_argument("--emit-config", metavar="DIR", help="write litellm_config.yaml and vLLM commands")
    parser.add_argument("--plots", metavar="DIR",
                        help="write PNG figures: cost against the threshold (the sweep) and GPUs "
                             "per pool (needs matplotlib, the [tools] extra)")
    parser.add_argument("--model-group", help="model_name of the emitted deployments (default: the model)")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")


def _pairs(text: str, path: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {part!r}", path=path)
        out[key.strip()] = value.strip()
    return out


def _percentiles(text: str, path: str) -> dict[float, float]:
    try:
        return {float(k): float(v) for k, v in _pairs(text, path).items()}
    except ValueError:
        raise ConfigError(f"expected Q=TOKENS numbers, got {text!r}", path=path) from None


def _gpu(args: argparse.Namespace) -> GpuSpec:
    if not args.gpu_spec:
        return get_gpu(args.gpu)
    f = _pairs(args.gpu_spec, "gpu_spec")
    try:
        return GpuSpec(f.get("name", "custom-gpu"), f.get("vendor", "custom"),
                       int(float(f["memory_gib"]) * GIB), float(f["bandwidth_tbps"]) * 1e12,
                       float(f["bf16_tflops"]) * 1e12, f.get("fp8", "0") in ("1", "true", "yes"),
                       float(f["price"]) if "price" in f else None, int(f.get("gpus_per_node", 8)),
                       float(f.get("interconnect_gbps", PCIE4_X16_BYTES_PER_SECOND / 1e9)) * 1e9)
    except (KeyError, ValueError) as error:
        raise ConfigError(f"needs memory_gib, bandwidth_tbps, bf16_tflops ({error})", path="gpu_spec") from None


def _model(args: argparse.Namespace) -> ModelSpec:
    if not args.model_spec:
        return get_model(args.model)
    f = _pairs(args.model_spec, "model_spec")
    try:
        params = float(f["params_b"]) * 1e9
        return ModelSpec(f.get("name", "custom-model"), int(f["layers"]), int(f["hidden"]), int(f["heads"]),
                         int(f["kv_heads"]), int(f["head_dim"]), params, params)
    except (KeyError, ValueError) as error:
        raise ConfigError(f"needs layers, hidden, heads, kv_heads, head_dim, params_b ({error})",
                          path="model_spec") from None


def _prices(text: str | None, gpus: list[str]) -> dict[str, float]:
    """``--price``: one figure for a single GPU, or GPU=USD pairs (names as in --gpu)."""
    if not text:
        return {}
    if "=" not in text:
        if len(gpus) > 1:
            raise ConfigError("with several GPUs give GPU=USD pairs, e.g. a100=1.9,l40s=0.9", path="price")
        try:
            return {gpus[0]: float(text)}
        except ValueError:
            raise ConfigError(f"expected a number, got {text!r}", path="price") from None
    try:
        prices = {get_gpu(k).name: float(v) for k, v in _pairs(text, "price").items()}
    except ValueError:
        raise ConfigError(f"expected GPU=USD numbers, got {text!r}", path="price") from None
    unknown = set(prices) - {get_gpu(g).name for g in gpus}
    if unknown:
        raise ConfigError(f"price for a GPU not in --gpu: {', '.join(sorted(unknown))}", path="price")
    return prices


def _slo(args: argparse.Namespace) -> Slo:
    return Slo.parse(str(args.slo_ttft), args.slo_tpot)


def _gpus(args: argparse.Namespace) -> list[GpuSpec]:
    if args.gpu_spec:
        return [_gpu(args)]
    names = [g for g in (p.strip() for p in args.gpu.split(",")) if g]
    if not names:
        raise ConfigError("needs at least one GPU", path="gpu")
    return list(dict.fromkeys(get_gpu(n) for n in names))


def build_planner(args: argparse.Namespace) -> Planner:
    if args.trace:
        workload = read_trace(args.trace)
        rate = args.rate or workload.rate_per_second
        mix = LengthMix.from_trace(workload, rate, args.arrivals)
    else:
        if not args.rate:
            raise ConfigError("a percentile summary needs --rate", path="rate")
        mix = LengthMix.from_percentiles(_percentiles(args.prompt_percentiles, "prompt_percentiles"),
                                         _percentiles(args.output_percentiles, "output_percentiles"))
        rate = args.rate
    gpus = _gpus(args)
    prices = _prices(args.price, [g.name for g in gpus])
    model = _model(args)
    hardware = Hardware.build(gpus[0], model, tensor_parallel_size=args.tensor_parallel_size, dtype=args.dtype,
                              kv_cache_dtype=args.kv_cache_dtype,
                              gpu_memory_utilization=args.gpu_memory_utilization,
                              usd_per_gpu_hour=prices.get(gpus[0].name), min_kv_tokens=4 * args.long_max_model_len)
    options = tuple(Hardware(g, model, 1, args.dtype, args.kv_cache_dtype, args.gpu_memory_utilization,
                             _price(g, prices)) for g in gpus)
    search = None if args.no_search else SearchSpace(options, (args.tensor_parallel_size,) if args.tensor_parallel_size else None)
    measured = {k: v for k, v in (("short", args.short_throughput), ("long", args.long_throughput)) if v}
    benches = {role: read_vllm_bench(file, option=f"{role}_bench")
               for role, file in (("short", args.short_bench), ("long", args.long_bench)) if file}
    return Planner(mix, rate, hardware, slo=_slo(args), utilisation=args.utilisation,
                   long_max_model_len=args.long_max_model_len, long_max_num_seqs=args.long_max_num_seqs,
                   measured_mu=measured or None, measured_bench=benches or None,
                   check_slo=not args.no_slo_check, search=search)


def _price(gpu: GpuSpec, prices: dict[str, float]) -> float:
    price = prices.get(gpu.name, gpu.usd_per_gpu_hour)
    if price is None:
        raise ConfigError(f"no price known for {gpu.name}; give --price {gpu.name}=USD", path="price")
    return price


def _thresholds(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}", path="thresholds") from None
    if not values or min(values) < 1:
        raise ConfigError("needs positive token counts", path="thresholds")
    return values


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or not math.isfinite(seconds) else f"{seconds * 1e3:.0f}"


def render(plan: Plan, console: Console) -> None:
    hw = plan.hardware
    console.print(f"[bold]{hw.model.name}[/] ({hw.dtype}), {plan.rate_per_second:g} req/s, SLO P99 TTFT <= "
                  f"{plan.slo.ttft_text}, P99 TPOT <= {plan.slo.tpot_p99_seconds * 1e3:g} ms; baselines on "
                  f"{hw.tensor_parallel_size}x {hw.gpu.name} at ${hw.usd_per_gpu_hour}/GPU-h")
    if plan.burstiness:
        console.print(f"Arrivals: {plan.arrival_model}; burstiness (variance/mean of arrivals per second, 1 = "
                      "Poisson): " + ", ".join(f"{k} {v:.2f}" for k, v in plan.burstiness.items()))
    table = Table(title=f"Recommended threshold: {plan.threshold} tokens")
    for col in ("fleet", "pool", "hardware", "tokens", "share", "req/s", "mu", "inst", "GPUs", "$/year", "util",
                "max_num_seqs", "KV-safe seqs", "max_in_flight", "batched tok", "P99 TTFT ms", "P99 TPOT ms",
                "sized by"):
        table.add_column(col, justify="right")
    fleets = [(name, fleet) for name, fleet in plan.baselines.items()] or [("homogeneous", plan.homogeneous)]
    for label, fleet in (*fleets, ("dual pool", plan.dual_pool)):
        for pool in fleet.pools:
            pred = pool.prediction
            table.add_row(label, pool.name, pool.hardware.label if pool.hardware else "-",
                          f"{pool.low_tokens}-{pool.flags.max_model_len}",
                          f"{pool.share:.1%}", f"{pool.rate_per_second:.1f}", f"{pool.mu_per_instance:.2f}",
                          str(pool.instances), str(pool.gpus), f"{pool.usd_per_year / 1e6:.2f}M",
                          f"{pool.utilisation:.0%}", str(pool.flags.max_num_seqs),
                          _kv_cell(pool), str(pool.max_in_flight or "-"), str(pool.flags.max_num_batched_tokens),
                          _ms(pred.ttft_p99_seconds if pred else None),
                          _ms(pred.tpot_p99_seconds if pred else None), pool.constraint)
    console.print(table)
    sweep = Table(title="Threshold sweep")
    for col in ("threshold", "alpha", "rho (goodput)", "closed form", "rho (saturation)", "closed form (sat.)",
                "GPUs", "$/year", "saving", "SLO met"):
        sweep.add_column(col, justify="right")
    for o in plan.sweep:
        sweep.add_row(str(o.threshold), f"{o.alpha:.2%}", f"{o.rho:.2f}", f"{o.closed_form_saving_fraction:.1%}",
                      f"{o.rho_saturation:.2f}", f"{o.closed_form_saturation_saving_fraction:.1%}",
                      str(o.fleet.gpus), f"{o.fleet.usd_per_year / 1e6:.2f}M", f"{o.saving_fraction:.1%}",
                      "yes" if o.fleet.slo_met else "no")
    console.print(sweep)
    for e in plan.extra_pools:
        console.print(f"{e.pools} pools at {list(e.boundaries)}: {e.gpus} GPUs, saving "
                      f"{e.saving_fraction:.1%} (marginal {e.marginal_saving_fraction:+.1%})")
    for name, fleet in plan.baselines.items():
        console.print(f"baseline {name}: {fleet.gpus} GPUs, ${fleet.usd_per_year / 1e6:.2f}M/yr "
                      f"({_configs(fleet)}); the split saves {plan.saving_vs(name):.1%} against it")
    console.print(f"[bold]Against the tuned homogeneous fleet: GPUs {plan.homogeneous.gpus} -> {plan.dual_pool.gpus}; "
                  f"${plan.homogeneous.usd_per_year / 1e6:.2f}M -> ${plan.dual_pool.usd_per_year / 1e6:.2f}M "
                  f"per year; saving {plan.saving_fraction:.1%} (closed form alpha*(1-1/rho), rho as goodput at the "
                  f"SLO: {plan.alpha:.3f}*(1-1/{plan.rho:.2f}) = {plan.closed_form_saving_fraction:.1%}; the paper's "
                  f"saturation rho {plan.rho_saturation:.2f} gives {plan.closed_form_saturation_saving_fraction:.1%}); "
                  f"binding constraint {plan.binding_constraint}[/]")
    if "paper" in plan.baselines:
        config = 1 - plan.homogeneous.usd_per_year / plan.baselines["paper"].usd_per_year
        console.print(f"Of the {plan.saving_vs('paper'):.1%} saved against the paper's fleet, {config:.1%} is the "
                      f"homogeneous fleet's own configuration and the split adds {plan.saving_fraction:.1%} of what "
                      "remains.")
    if plan.saving_fraction <= 0:
        console.print("[yellow]No split pays off for this workload against the tuned homogeneous fleet: keep "
                      "the homogeneous fleet (the threshold above is the least costly split, shown for "
                      "comparison).[/]")
    for label, fleet in (("homogeneous", plan.homogeneous), ("dual pool", plan.dual_pool)):
        for pool in fleet.pools:
            kv = pool.kv
            if kv is not None and kv.can_preempt:
                console.print(
                    f"[yellow]{label} / {pool.name}: max_num_seqs {kv.max_num_seqs} > {kv.safe_max_num_seqs} "
                    f"KV-safe sequences: with every slot busy its P99 KV demand is "
                    f"{kv.demand_over_capacity:.1f}x the {kv.kv_capacity_tokens:,}-token cache and vLLM "
                    f"preempts. Use --max-num-seqs {kv.safe_max_num_seqs} for that pool (or "
                    f"{kv.worst_case_max_num_seqs} never to preempt) if its load fills the slots.[/]")
    _render_measured(plan, console)
    if not (plan.homogeneous.slo_met and plan.dual_pool.slo_met):
        console.print("[yellow]Some pool cannot meet the SLO at any size (e.g. prompts whose "
                      "prefill alone exceeds the TTFT target); it is sized by the utilisation cap.[/]")


def _render_measured(plan: Plan, console: Console) -> None:
    """Per pool sized from a bench file: where its mu came from and whether the bench's
    lengths resemble the pool's (the figure transfers only if they do)."""
    for role, bench in plan.measured_bench.items():
        console.print(f"{role}: mu {bench.request_throughput:.2f} req/s from {escape(bench.source)} "
                      f"({bench.completed} requests, mean {bench.mean_prompt_tokens:.0f} prompt / "
                      f"{bench.mean_output_tokens:.0f} output tokens)")
        for warning in bench.warnings:
            console.print(f"[yellow]{escape(warning)}[/]")
    for label, fleet in (("homogeneous", plan.homogeneous), ("dual pool", plan.dual_pool)):
        for pool in fleet.pools:
            check = pool.length_check
            if check is None:
                continue
            if check.pool_mean_prompt_tokens is None or check.pool_mean_output_tokens is None:
                console.print(f"{label} / {pool.name}: no requests in its range, lengths not compared")
                continue
            console.print(f"{label} / {pool.name}: bench mean {check.bench_mean_prompt_tokens:.0f} prompt / "
                          f"{check.bench_mean_output_tokens:.0f} output tokens, pool's "
                          f"{check.pool_mean_prompt_tokens:.0f} / {check.pool_mean_output_tokens:.0f}")
            if check.warning:
                console.print(f"[yellow]{label} / {pool.name}: {escape(check.warning)}[/]")


def _configs(fleet: object) -> str:
    pools = getattr(fleet, "pools", ())
    return "; ".join(f"{p.name} {p.hardware.label if p.hardware else '-'} {p.flags.max_num_seqs} seqs "
                     f"{p.flags.max_num_batched_tokens} tok" for p in pools)


def _kv_cell(pool: PoolPlan) -> str:
    kv = pool.kv
    if kv is None:
        return "-"
    return f"{kv.safe_max_num_seqs} ({kv.worst_case_max_num_seqs})" + (" !" if kv.can_preempt else "")


#: what --plots imports (matplotlib, from the [tools] extra): checked before planning
PLOT_MODULES = ("matplotlib",)


def run(args: argparse.Namespace) -> int:
    from litellm_dualpool.planner.emit import emit

    if getattr(args, "plots", None) and not require_modules("plan", PLOT_MODULES, purpose="--plots"):
        return EXIT_UNAVAILABLE
    try:
        planner = build_planner(args)
        thresholds = _thresholds(args.thresholds)
        if "short" in (planner.measured_mu or {}) and len(thresholds) > 1:
            # one measured figure for every candidate would make the sweep pick the largest
            raise ConfigError("a measured short-pool throughput holds only for the max_model_len it was measured "
                              "at: give --thresholds that one value (the short instance's --max-model-len)",
                              path="thresholds")
        plan = make_plan(planner, thresholds, max_pools=max(args.max_pools, 2))
        written = emit(plan, args.emit_config, model_group=args.model_group) if args.emit_config else []
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    console = Console(file=sys.stderr if args.json else sys.stdout, width=160)
    render(plan, console)
    figures: list[str] = []
    if getattr(args, "plots", None):
        from litellm_dualpool.planner import plots

        figures = [str(p) for p in plots.write_plan(plan, args.plots)]
    for path in [*written, *figures]:
        console.print(f"wrote {path}")
    if args.json:
        payload = plan.to_dict()
        if figures:
            payload["plots"] = figures
        print(json.dumps(payload, separators=(",", ":")))
    return 0
