"""Cross-check of the engine model against an independent single-engine simulator, the npm
package @doublewordai/inference-lab (MIT, Rust compiled to WebAssembly, run under Node).

Rerun (needs node and npm; installs into a temporary folder outside the repository):

    mkdir -p /tmp/ilab && (cd /tmp/ilab && npm install @doublewordai/inference-lab@0.2.1)
    .venv/bin/python bench/inference_lab_crosscheck.py --ilab-dir /tmp/ilab [--json]

Both simulators get the same instance (Llama-3-70B BF16, 4 x A100 seen as one device with our
*effective* rates, i.e. peak x efficiency, so the two rooflines agree), the same vLLM knobs
(FCFS, chunked prefill, 16-token blocks, max_num_seqs, max_num_batched_tokens) and the same
deterministic workload (fixed-rate arrivals, fixed lengths), with the KV cache shrunk step by
step to force preemptions. Our step overhead is set to 0 because inference-lab has none.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from litellm_dualpool.sim import roofline
from litellm_dualpool.sim.engine import Engine, EngineConfig

RUNNER = """
import { readFileSync } from 'fs';
import { createRequire } from 'module';
const dir = process.argv[2];
const mod = await import(dir + '/node_modules/@doublewordai/inference-lab/inference_lab.js');
mod.initSync({ module: readFileSync(dir + '/node_modules/@doublewordai/inference-lab/inference_lab_bg.wasm') });
const r = mod.run_simulation(readFileSync(0, 'utf8'));
const m = r.metrics ?? r;
const out = {};
for (const [k, v] of (m instanceof Map ? m.entries() : Object.entries(m))) if (typeof v !== 'object') out[k] = v;
console.log(JSON.stringify(out));
"""

SCENARIOS = [
    # prompt, output, rate (req/s), requests, max_num_seqs, KV capacities (tokens)
    (2000, 1000, 2.0, 300, 64, (16384, 32768, 65536, 131072, 262144)),
    (500, 200, 4.0, 400, 32, (8192, 16384, 32768)),
]


def ilab_config(prompt: int, output: int, rate: float, n: int, seqs: int, kv_tokens: int) -> dict:
    return {
        "hardware": {"name": "A100x4", "compute_flops": 4 * 312e12 * roofline.COMPUTE_EFFICIENCY,
                     "memory_bandwidth": 4 * 2.039e12 * roofline.MEMORY_EFFICIENCY,
                     "memory_capacity": 4 * 80 * 2**30, "kv_cache_capacity": kv_tokens * 327680,
                     "gpu_memory_utilization": 0.9, "bytes_per_param": 2},
        "model": {"name": "llama-3-70b", "num_parameters": 70_550_000_000, "num_active_parameters": 70_550_000_000,
                  "num_layers": 80, "hidden_dim": 8192, "num_heads": 64, "num_kv_heads": 8,
                  "max_seq_len": 8192},
        "scheduler": {"max_num_batched_tokens": 8192, "max_num_seqs": seqs, "policy": "fcfs",
                      "enable_chunked_prefill": True, "block_size": 16},
        "workload": {"arrival_pattern": "fixed_rate", "arrival_rate": rate,
                     "input_len_dist": {"type": "fixed", "value": prompt},
                     "output_len_dist": {"type": "fixed", "value": output}, "num_requests": n, "seed": 1},
        "simulation": {"log_interval": 10**9},
    }


def ours(prompt: int, output: int, rate: float, n: int, seqs: int, kv_tokens: int) -> dict:
    cfg = EngineConfig("a100", "llama-3-70b", tensor_parallel_size=4, max_model_len=min(8192, kv_tokens),
                       max_num_seqs=seqs, max_num_batched_tokens=8192,
                       num_gpu_blocks_override=kv_tokens // 16, step_overhead_seconds=0.0)
    engine, now, k, done = Engine(cfg), 0.0, 0, []
    arrivals = [i / rate for i in range(n)]
    while k < n or engine.has_work:
        while k < n and arrivals[k] <= now:
            engine.submit(k, prompt, output, arrivals[k])
            k += 1
        if not engine.has_work:
            now = arrivals[k]
            continue
        result = engine.step(now)
        now = result.end_time
        done += result.finished
    return {"total_preemptions": engine.num_preemptions_total, "requests_per_sec": n / now,
            "ttft_p50": 1e3 * float(np.median([f.ttft_seconds for f in done])),
            "per_token_p50": 1e3 * float(np.median([f.tpot_seconds for f in done]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ilab-dir", default="/tmp/ilab", help="folder where the npm package is installed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runner = Path(args.ilab_dir) / "crosscheck_runner.mjs"
    runner.write_text(RUNNER)
    rows = []
    for prompt, output, rate, n, seqs, capacities in SCENARIOS:
        for kv in capacities:
            cfg = json.dumps(ilab_config(prompt, output, rate, n, seqs, kv))
            proc = subprocess.run(["node", str(runner), os.path.abspath(args.ilab_dir)], input=cfg,
                                  capture_output=True, text=True, timeout=300, check=True)
            theirs = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"prompt": prompt, "output": output, "rate": rate, "requests": n, "max_num_seqs": seqs,
                         "kv_tokens": kv, "ours": ours(prompt, output, rate, n, seqs, kv),
                         "inference_lab": {k: theirs[k] for k in ("total_preemptions", "requests_per_sec",
                                                                  "ttft_p50", "per_token_p50")}})
    print(f"{'workload':>22} {'KV tokens':>9} | {'preempt ours/ilab':>17} | {'req/s ours/ilab':>15} | "
          f"{'TTFT p50 s ours/ilab':>20} | {'TPOT p50 ms ours/ilab':>21}")
    for r in rows:
        o, t = r["ours"], r["inference_lab"]
        wl = f"{r['prompt']}/{r['output']} @{r['rate']:g}/s s{r['max_num_seqs']}"
        print(f"{wl:>22} {r['kv_tokens']:>9} | {o['total_preemptions']:>8} / {t['total_preemptions']:<6} | "
              f"{o['requests_per_sec']:>6.2f} / {t['requests_per_sec']:<6.2f} | "
              f"{o['ttft_p50'] / 1e3:>9.1f} / {t['ttft_p50'] / 1e3:<8.1f} | "
              f"{o['per_token_p50']:>9.1f} / {t['per_token_p50']:<9.1f}")
    if args.json:
        print(json.dumps({"rows": rows, "inference_lab_version": "0.2.1",
                          "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                      "python": sys.version.split()[0]},
                          "date": dt.date.today().isoformat()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
