"""Fleet simulator speed: 100,000 requests at 1,000 req/s through a ~360-instance fleet.

Rerun:  .venv/bin/python bench/sim_speed.py [--json] [--requests N] [--router dual_pool|homogeneous]

Workload: the Azure 2023 conversation trace (../shared/data), repeated to N requests and scaled to
1,000 req/s. Fleet: Llama-3-70B BF16 on 4 x A100 per instance; dual_pool = 300 short instances
(8K context, 128 seqs) + 60 long (64K, 16 seqs) with the real calibrator and policy in the loop;
homogeneous = 360 long instances. Prints a table and, with --json, one JSON object on the last
line: {"requests", "wall_s", "sim_requests_per_s", ...} plus the machine it ran on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

from litellm_dualpool.sim.engine import EngineConfig
from litellm_dualpool.sim.fleet import SimPool, simulate
from litellm_dualpool.sim.routers import PolicyRouter, SinglePoolRouter
from litellm_dualpool.sim.workload import read_trace, synthesize_shapes

TRACE = Path(__file__).resolve().parents[2] / "shared/data/traces/azure2023/AzureLLMInferenceTrace_conv.csv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--router", choices=["dual_pool", "homogeneous"], default="dual_pool")
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    t0 = time.perf_counter()
    workload = read_trace(args.trace).resized(args.requests).scaled_to_rate(args.rate)
    shapes = synthesize_shapes(workload, seed=0)
    prep_s = time.perf_counter() - t0
    long = EngineConfig("a100", "llama-3-70b", tensor_parallel_size=4, max_model_len=65536,
                        max_num_seqs=16, max_num_batched_tokens=8192)
    if args.router == "homogeneous":
        pools = [SimPool("long", long, 360)]
        router = SinglePoolRouter("long")
    else:
        short = EngineConfig("a100", "llama-3-70b", tensor_parallel_size=4, max_model_len=8192,
                             max_num_seqs=128, max_num_batched_tokens=16384)
        pools = [SimPool("short", short, 300), SimPool("long", long, 60)]
        router = PolicyRouter()
    t1 = time.perf_counter()
    result = simulate(workload, pools, router, shapes=shapes)
    sim_s = time.perf_counter() - t1
    wall_s = prep_s + sim_s
    instances = sum(p.instances for p in pools)

    print(f"{'requests':>10} {'instances':>9} {'router':>12} {'prep s':>7} {'sim s':>7} {'wall s':>7} "
          f"{'req/s (wall)':>12} {'simulated s':>11}")
    print(f"{len(workload):>10} {instances:>9} {args.router:>12} {prep_s:>7.2f} {sim_s:>7.2f} "
          f"{wall_s:>7.2f} {len(workload) / wall_s:>12.0f} {result.horizon_seconds:>11.1f}")
    print(f"completed={result.fleet.completed} refused={result.refused_gateway + result.refused_backend} "
          f"TTFT p99={result.fleet.ttft_p99_seconds:.2f}s preemptions={result.fleet.preemptions}")
    if args.json:
        print(json.dumps({
            "requests": len(workload), "wall_s": round(wall_s, 3),
            "sim_requests_per_s": round(len(workload) / wall_s, 1),
            "simulate_s": round(sim_s, 3), "prepare_s": round(prep_s, 3),
            "instances": instances, "router": args.router, "rate": args.rate,
            "simulated_seconds": round(result.horizon_seconds, 2),
            "completed": result.fleet.completed,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": sys.version.split()[0]},
            "date": dt.date.today().isoformat(),
        }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
