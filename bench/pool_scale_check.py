"""One pool of a "Where the split pays" scenario, simulated at the same load per instance on
slices of different sizes: does least-loaded balancing pool prompt queues better as the pool
grows (as the planner's balancer term n^w assumes), or not (the simulator's answer)?

Rerun (Mooncake's tuned homogeneous fleet at the simulator's 654 slice instances of K = 10,
then 1/40 ... 1/5 slices at the same load per instance; ~1 min on 2 cores):
    .venv/bin/python bench/pool_scale_check.py --scenario mooncake --pool homogeneous \\
        --instances 654 --at-k 10 --ks 40,20,10,5
Smaller pools, each simulated long enough to see as many requests as the pool at --at-k (the
measurement behind BALANCER_POOLING_MAX_INSTANCES; docs/evaluation.md "Round 5", ~6 min):
    .venv/bin/python bench/pool_scale_check.py --scenario mooncake --pool homogeneous \
        --instances 654 --at-k 10 --ks 640,320,160,80,40 --same-requests

Per slice it prints the pool's instances, the simulator's P99 of TTFT over each request's
allowance and its share of prompts waiting more than 0.05 s beyond their own prefill, beside the
planner's P99 of TTFT over the allowance at the same size and rate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import where_split_pays as w

from litellm_dualpool.planner.model import LengthMix, make_plan, predict_load, prefill_seconds
from litellm_dualpool.sim.fleet import SimPool, simulate
from litellm_dualpool.sim.routers import SinglePoolRouter
from litellm_dualpool.sim.workload import Workload

#: A prompt counts as waiting when its TTFT exceeds its own prefill alone by this much (seconds).
WAIT_SECONDS = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--pool", required=True, help="homogeneous, short or long")
    parser.add_argument("--instances", type=int, required=True, help="slice instances at --at-k")
    parser.add_argument("--at-k", type=int, required=True)
    parser.add_argument("--ks", default="40,20,10,5")
    parser.add_argument("--same-requests", action="store_true",
                        help="simulate each slice for --at-k's seconds times k / at-k, so every size sees about as "
                             "many requests (small pools' P99 is otherwise the maximum of a few dozen)")
    args = parser.parse_args()
    sc = next(s for s in w.SCENARIOS if s.key == args.scenario)
    work = w.workload_of(sc)
    plan = make_plan(w.planner_for(sc, work), max_pools=2)
    pools = [*plan.homogeneous.pools] if args.pool == "homogeneous" else list(plan.dual_pool.pools)
    pool = next(p for p in pools if args.pool in ("homogeneous", p.name))
    hw = pool.hardware or plan.hardware
    engine = hw.engine(pool.flags.max_model_len, pool.flags.max_num_seqs, pool.flags.max_num_batched_tokens)
    print(f"{sc.key} {args.pool}: {hw.label}, {pool.flags.max_num_seqs} seqs, "
          f"{pool.flags.max_num_batched_tokens} tok")
    for k in (int(x) for x in args.ks.split(",")):
        sl = w.slice_of(sc, work, k, seconds=sc.sim_seconds * k / args.at_k if args.same_requests else None)
        total = sl.prompt_tokens + sl.output_tokens
        m = (total > pool.low_tokens) & (total <= pool.flags.max_model_len)
        sub = Workload(sc.key, sl.arrival_seconds[m], sl.prompt_tokens[m], sl.output_tokens[m],
                       sl.category[m], sl.categories)
        n = round(args.instances * args.at_k / k)
        res = simulate(sub, [SimPool(pool.name, engine, n, hw.usd_per_gpu_hour)], SinglePoolRouter(pool.name),
                       slo=plan.slo.sim_targets())
        allowance = plan.slo.ttft_allowance_seconds(sub.prompt_tokens, sub.total_tokens)
        mix = LengthMix.from_workload(sub)
        pred = predict_load(engine, mix, len(sub) / sub.duration_seconds, n, slo=plan.slo,
                            arrival_cv2=mix.arrival_dispersion(1.0))
        # each prompt's prefill alone: its chunk steps summed at their offsets (the engine's steps)
        alone = prefill_seconds(engine, sub.prompt_tokens, round(pred.decode_batch))[0]
        waited = float(np.mean(res.ttft_seconds - alone > WAIT_SECONDS))
        over = float(np.nanquantile(res.ttft_seconds - allowance, 0.99))
        print(f"K={k:3d} instances={n:5d} requests={len(sub):6d} simulator: P99 TTFT over allowance {over:5.2f} s, "
              f"waiting {waited:.3f} | planner: {pred.ttft_over_allowance_p99_seconds:5.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
