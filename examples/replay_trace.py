#!/usr/bin/env python3
"""Replay a trace (or the demo's built-in workload) against any OpenAI-compatible gateway.

Point it at your LiteLLM proxy with the plugin and it sends requests of the trace's lengths,
written from real offline text (see litellm_dualpool/demo/synth.py), at the trace's arrival
times (or rescaled to --rate), then prints per-pool counts and latencies (pools from the
plugin's x-dualpool-pool header) and one JSON line. Needs `pip install litellm-dualpool[tools]`.

    export LITELLM_MASTER_KEY=sk-...
    python examples/replay_trace.py --gateway http://127.0.0.1:4000 --model llama-3-70b \\
        --trace AzureLLMInferenceTrace_conv.csv --requests 500 --rate 5

Requests are sent with ``ignore_eos`` so vLLM generates exactly the trace's output length.
Exit status 1 if any request was lost (refusals of requests larger than every pool are not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

from litellm_dualpool.demo.replay import Outcome, Replayer, Status
from litellm_dualpool.demo.report import percentile_ms
from litellm_dualpool.demo.synth import Synthesizer
from litellm_dualpool.demo.workload import WorkloadSettings, builtin_workload, load_trace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:4000", help="proxy base URL")
    parser.add_argument("--api-key", default=os.environ.get("LITELLM_MASTER_KEY"),
                        help="gateway key (default $LITELLM_MASTER_KEY)")
    parser.add_argument("--model", default="llama-3-70b", help="model group to call")
    parser.add_argument("--trace", type=Path, help="Azure 2023 CSV or Mooncake JSONL")
    parser.add_argument("--requests", type=int, default=200, help="first N requests")
    parser.add_argument("--rate", type=float, default=None,
                        help="rescale arrivals to this mean rate (req/s); built-in default 5")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
    parser.add_argument("--tokenizer", choices=("llama3", "qwen3"), default="llama3",
                        help="tokenizer the lengths are counted in (the served model's)")
    parser.add_argument("--largest-pool-tokens", type=int, default=65536,
                        help="requests above this are expected to be refused")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("give --api-key or set LITELLM_MASTER_KEY")
    if args.trace:
        specs = load_trace(args.trace, limit=args.requests, rate_per_s=args.rate, seed=args.seed,
                           largest_limit_tokens=args.largest_pool_tokens)
    else:
        specs = builtin_workload(WorkloadSettings(
            requests=args.requests, rate_per_s=args.rate or 5.0, seed=args.seed,
            largest_limit_tokens=args.largest_pool_tokens))
    synth = Synthesizer(args.tokenizer, seed=args.seed)
    print(f"replaying {len(specs)} requests over {specs[-1].arrival_s:.0f} s to {args.gateway}",
          file=sys.stderr)

    def progress(outcome: Outcome) -> None:
        if outcome.status is Status.LOST:
            print(f"lost #{outcome.spec.index}: {outcome.error}", file=sys.stderr)

    replayer = Replayer(args.gateway.rstrip("/") + "/v1", args.api_key,
                        lambda spec: synth.body(spec, args.model),
                        concurrency=args.concurrency, on_outcome=progress)
    outcomes = asyncio.run(replayer.run(specs))
    status = Counter(o.status.value for o in outcomes)
    pools = {}
    for pool in sorted({o.pool or "unknown" for o in outcomes if o.status is Status.OK}):
        latencies = [o.latency_s for o in outcomes
                     if o.status is Status.OK and (o.pool or "unknown") == pool]
        pools[pool] = {"requests": len(latencies), "p50_ms": percentile_ms(latencies, 50),
                       "p99_ms": percentile_ms(latencies, 99)}
        print(f"{pool:>10}: {len(latencies):6d} requests, P50 {pools[pool]['p50_ms']} ms, "
              f"P99 {pools[pool]['p99_ms']} ms", file=sys.stderr)
    summary = {"requests": len(outcomes), "ok": status["ok"], "refused": status["refused"],
               "lost": status["lost"], "pools": pools}
    print(json.dumps(summary))
    return 1 if summary["lost"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
