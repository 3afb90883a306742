"""Single-instance saturation throughput of Llama-3-70B BF16 on 4 x A100 (the calibration table
of docs/simulator.md), per trace, for the paper's short (8K/128) and long (64K/16) settings.

Rerun:  .venv/bin/python bench/instance_throughput.py [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

from litellm_dualpool.sim.capacity import saturation_throughput
from litellm_dualpool.sim.engine import EngineConfig
from litellm_dualpool.sim.workload import read_trace

DATA = Path(__file__).resolve().parents[2] / "shared/data/traces"
TRACES = {"azure-conv": "azure2023/AzureLLMInferenceTrace_conv.csv",
          "azure-code": "azure2023/AzureLLMInferenceTrace_code.csv",
          "mooncake-conv": "mooncake/conversation_trace.jsonl"}
SETTINGS = {"short 8K/128": dict(max_model_len=8192, max_num_seqs=128, max_num_batched_tokens=16384),
            "long 64K/16": dict(max_model_len=65536, max_num_seqs=16, max_num_batched_tokens=8192)}
PAPER = {"short 8K/128": 11.2, "long 64K/16": 2.8}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    print(f"{'trace':>14} {'setting':>13} {'req/s':>7} {'out tok/s':>9} {'batch':>6} {'paper req/s':>11}")
    for trace, rel in TRACES.items():
        w = read_trace(DATA / rel)
        for name, knobs in SETTINGS.items():
            cfg = EngineConfig("a100", "llama-3-70b", tensor_parallel_size=4, **knobs)  # type: ignore[arg-type]
            r = saturation_throughput(cfg, w.prompt_tokens, w.output_tokens, requests=args.requests)
            rows.append({"trace": trace, "setting": name, "requests_per_second": round(r.requests_per_second, 3),
                         "output_tokens_per_second": round(r.output_tokens_per_second, 1),
                         "mean_running": round(r.mean_running, 1), "paper_requests_per_second": PAPER[name]})
            print(f"{trace:>14} {name:>13} {r.requests_per_second:>7.2f} {r.output_tokens_per_second:>9.0f} "
                  f"{r.mean_running:>6.1f} {PAPER[name]:>11}")
    if args.json:
        print(json.dumps({"rows": rows, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                    "python": sys.version.split()[0]},
                          "date": dt.date.today().isoformat()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
