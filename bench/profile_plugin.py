"""The plugin alone: CPU microseconds per request in its hooks, called in-process the way the proxy
calls them (pre-call hook, filter, success event), with realistic arguments.

Rerun:  .venv/bin/python bench/profile_plugin.py [--json] [--requests 3000] [--profile]
        (--profile: cProfile over the same loop, the top functions by own time, to stderr)
        Before/after on one machine: `git worktree add /tmp/base <older commit>`, then
        .venv/bin/python bench/profile_plugin.py --json --baseline-src /tmp/base [--repeats 3]
        (each tree measured in its own subprocess, alternating run by run)

Per request: `async_pre_call_hook(UserAPIKeyAuth(...), None, data, "acompletion")` on a proxy-like
body (model, messages, max_tokens, the metadata the proxy adds), then
`async_filter_deployments("llama", two deployments, messages, request_kwargs)` and
`async_log_success_event(kwargs, ModelResponse, ...)` with the litellm_params/model_info and raw
backend body LiteLLM passes. The caller is the master key (`--caller admin`, trusted: the
plugin learns from every request) or a virtual key (`--caller key`). The callback is built
from a YAML-equivalent dict with a real litellm.Router prepared (recovery group installed) and
in-memory state, inside a running event loop, as in the proxy. Time is CPU time of this thread
(`time.thread_time_ns`), per hook, per call; figures are the mean (the headline: learning refits
every few requests, which a median hides), median and p99 over `--requests` calls after a
warm-up. Prompt sizes and texts are those of bench/proxy_overhead.py.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatch_overhead import _turns, chat_body

SIZES = {"1KB": (1024, 2), "32KB": (32 * 1024, 8), "256KB": (256 * 1024, 16)}
HOOKS = ("pre_call", "filter", "success")
VARIANTS = 16


def plugin_config() -> dict[str, Any]:
    deployments = []
    for pool, length, port in (("short", 8192, 8001), ("long", 131072, 8002)):
        deployments.append({
            "model_name": "llama",
            "litellm_params": {"model": "hosted_vllm/m", "api_base": f"http://127.0.0.1:{port}/v1",
                               "api_key": "none"},
            "model_info": {"max_model_len": length, "pool": pool}})
    return {"model_list": deployments, "dualpool_settings": {}}


def build_plugin(config: dict[str, Any]) -> tuple[Any, Any]:
    import litellm
    from prometheus_client import CollectorRegistry

    from litellm_dualpool.config import load_plugin_config
    from litellm_dualpool.metrics import DualPoolMetrics
    from litellm_dualpool.proxy import DualPoolCallback

    router = litellm.Router(model_list=config["model_list"], num_retries=0)
    plugin = DualPoolCallback(load_plugin_config(config), metrics=DualPoolMetrics(CollectorRegistry()),
                              router_provider=lambda: router)
    return plugin, router


def proxy_data(body: dict[str, Any], user: Any) -> dict[str, Any]:
    """What the proxy hands the pre-call hook: the body plus the metadata it adds."""
    return {**body, "proxy_server_request": {"url": "http://127.0.0.1:4000/v1/chat/completions",
                                             "method": "POST", "headers": {}, "body": body},
            "metadata": {"user_api_key_hash": user.token, "user_api_key_alias": None,
                         "user_api_key_team_id": None, "user_api_key_user_id": None,
                         "user_api_key_metadata": {}, "headers": {}, "endpoint": "/chat/completions",
                         "requester_ip_address": "127.0.0.1"}}


def success_kwargs(data: dict[str, Any], deployment: dict[str, Any], prompt_tokens: int
                   ) -> tuple[dict[str, Any], Any]:
    from litellm import ModelResponse

    raw = {"id": "cmpl-1", "object": "chat.completion", "created": 1, "model": "m",
           "choices": [{"index": 0, "finish_reason": "length",
                        "message": {"role": "assistant", "content": "word " * 16}}],
           "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 16,
                     "total_tokens": prompt_tokens + 16}}
    kwargs = {"model": "hosted_vllm/m", "messages": data["messages"], "stream": False,
              "litellm_call_id": "x", "original_response": json.dumps(raw),
              "litellm_params": {"metadata": data["metadata"], "model_info": deployment["model_info"],
                                 "api_base": deployment["litellm_params"]["api_base"]}}
    return kwargs, ModelResponse(**raw)


async def one_request(plugin: Any, user: Any, body: dict[str, Any], deployments: list[dict[str, Any]],
                      prompt_tokens: int, clock: Any = time.thread_time_ns) -> tuple[list[int], str]:
    data = proxy_data(body, user)
    t0 = clock()
    data = await plugin.async_pre_call_hook(user, None, data, "acompletion")
    t1 = clock()
    chosen = await plugin.async_filter_deployments(
        "llama", [dict(d) for d in deployments], data["messages"], dict(data))
    t2 = clock()
    kwargs, response = success_kwargs(data, chosen[0], prompt_tokens)
    t3 = clock()
    await plugin.async_log_success_event(kwargs, response, None, None)
    t4 = clock()
    return [t1 - t0, t2 - t1, t4 - t3], str(chosen[0]["model_info"].get("pool"))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def measure(size: str, requests: int, profile: cProfile.Profile | None,
                  caller: str = "admin", warmup: int = 600) -> dict[str, Any]:
    from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

    from litellm_dualpool.emulator.prompt import PromptCounter

    plugin, router = build_plugin(plugin_config())
    plugin.ensure_prepared()
    deployments = [dict(d) for d in router.get_model_list(model_name="llama")]
    user = UserAPIKeyAuth(token="0" * 64, api_key="sk-bench", **(
        {"user_role": LitellmUserRoles.PROXY_ADMIN} if caller == "admin" else {}))
    size_bytes, messages = SIZES[size]
    base = chat_body(_turns("mt_bench_question.jsonl"), size_bytes, messages)
    base.update(model="llama", max_tokens=16)
    counter = PromptCounter("llama3")
    bodies = []
    for i in range(VARIANTS):  # distinct bodies, exact Llama-3 token counts as a backend reports
        # the first message differs: distinct conversations (core/affinity.py), not turns of one
        first = dict(base["messages"][0], content=f"[request {i}] " + base["messages"][0]["content"])
        body = dict(base, messages=[first, *base["messages"][1:]])
        bodies.append((body, counter.chat(body).token_count))
    for i in range(warmup):  # warm: calibration settled (core/learning.py), caches filled
        body, tokens = bodies[i % VARIANTS]
        await one_request(plugin, user, body, deployments, tokens)
    if profile is not None:
        profile.enable()
    times: list[list[int]] = []
    pools: dict[str, int] = {}
    for i in range(requests):
        body, tokens = bodies[i % VARIANTS]
        timing, pool = await one_request(plugin, user, body, deployments, tokens)
        times.append(timing)
        pools[pool] = pools.get(pool, 0) + 1
    if profile is not None:
        profile.disable()
    per_hook = {h: [t[i] / 1000.0 for t in times] for i, h in enumerate(HOOKS)}
    total = [sum(t) / 1000.0 for t in times]
    return {
        "total_us_mean": round(statistics.fmean(total), 2),
        "total_us_median": round(statistics.median(total), 2), "total_us_p99": round(p99(total), 2),
        **{f"{h}_us_median": round(statistics.median(v), 2) for h, v in per_hook.items()},
        **{f"{h}_us_mean": round(statistics.fmean(v), 2) for h, v in per_hook.items()},
        "pools": pools, "learned_bytes_per_token": _learned(plugin),
        "learning_outcomes": _outcomes(plugin),
        "callback_errors": _errors(plugin), "requests": requests,
    }


def _errors(plugin: Any) -> float:
    total = 0.0
    for metric in plugin.metrics.callback_errors.collect():
        total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def _outcomes(plugin: Any) -> dict[str, float]:
    """Learning outcomes over warm-up and timed requests (learned, skipped, ...)."""
    out: dict[str, float] = {}
    for metric in plugin.metrics.learning.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["outcome"]] = sample.value
    return out


def _learned(plugin: Any) -> float | None:
    for metric in plugin.metrics.bytes_per_token.collect():
        for sample in metric.samples:
            return round(sample.value, 3)
    return None


def _run_tree(src: Path, size: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement of one size in a subprocess importing the plugin from `src`."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    argv = [sys.executable, str(Path(__file__).resolve()), "--json", "--sizes", size,
            "--requests", str(args.requests), "--warmup", str(args.warmup),
            "--caller", args.caller]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return dict(result["sizes"][size])


def compare(args: argparse.Namespace) -> int:
    """Baseline and current trees, alternating run by run on the same machine: the means
    (per hook too) of each run, the median over runs, and current over baseline."""
    current_src = Path(__file__).resolve().parents[1]
    trees = {"baseline": args.baseline_src, "current": current_src}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {s: [] for s in args.sizes}
                                                        for t in trees}
    for size in args.sizes:
        for r in range(args.repeats):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for tree in order:
                runs[tree][size].append(_run_tree(trees[tree], size, args))
    keys = ("total_us_mean", "pre_call_us_mean", "filter_us_mean", "success_us_mean")
    out: dict[str, Any] = {}
    print(f"{'size':>6} {'hook':<16} {'baseline us':>12} {'current us':>11} {'ratio':>7}"
          "   (median over runs of per-run means)")
    for size in args.sizes:
        out[size] = {}
        for key in keys:
            base = statistics.median(r[key] for r in runs["baseline"][size])
            cur = statistics.median(r[key] for r in runs["current"][size])
            out[size][key] = {"baseline": round(base, 2), "current": round(cur, 2),
                              "ratio": round(cur / base, 3) if base else None}
            print(f"{size:>6} {key:<16} {base:>12.1f} {cur:>11.1f} {cur / base:>7.3f}")
        out[size]["pools"] = {t: runs[t][size][-1]["pools"] for t in trees}
        out[size]["learning_outcomes"] = {t: runs[t][size][-1].get("learning_outcomes")
                                          for t in trees}
    result = {"compare": out, "baseline_src": str(args.baseline_src), "repeats": args.repeats,
              "requests": args.requests, "warmup": args.warmup, "caller": args.caller,
              "runs": runs,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": sys.version.split()[0],
                          "loadavg": [round(v, 2) for v in os.getloadavg()],
                          "date": datetime.datetime.now(datetime.UTC).isoformat(
                              timespec="seconds")}}
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--requests", type=int, default=3000, help="timed requests per size")
    ap.add_argument("--profile", action="store_true", help="cProfile top functions to stderr")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--warmup", type=int, default=600,
                    help="untimed requests first: past the 512 observations after which a key "
                         "counts as settled (dualpool_settings.learning), caches filled")
    ap.add_argument("--caller", choices=["admin", "key"], default="admin",
                    help="admin: the master key, trusted, every request learned (as in "
                         "bench/proxy_overhead.py); key: a virtual key under the influence guard "
                         "(after a few requests per minute its observations are capped)")
    ap.add_argument("--baseline-src", type=Path, default=None, metavar="DIR",
                    help="also measure the plugin's code in DIR (e.g. a `git worktree add` of an "
                         "older commit), interleaved run by run with this tree's, in subprocesses")
    ap.add_argument("--repeats", type=int, default=3,
                    help="with --baseline-src: runs of each tree per size (alternating)")
    args = ap.parse_args(argv)
    if args.baseline_src is not None:
        return compare(args)
    import litellm  # noqa: F401  (import cost outside the timing)

    results: dict[str, Any] = {}
    print(f"{'size':>6} {'total us mean':>14} {'median':>8} {'p99':>8} {'pre_call':>9} "
          f"{'filter':>8} {'success':>8} {'errors':>7}   (per hook: means)")
    for size in args.sizes:
        profile = cProfile.Profile() if args.profile else None
        results[size] = asyncio.run(measure(size, args.requests, profile, args.caller,
                                            args.warmup))
        r = results[size]
        print(f"{size:>6} {r['total_us_mean']:>14.1f} {r['total_us_median']:>8.1f} "
              f"{r['total_us_p99']:>8.1f} {r['pre_call_us_mean']:>9.1f} {r['filter_us_mean']:>8.1f} "
              f"{r['success_us_mean']:>8.1f} {r['callback_errors']:>7.0f}")
        if profile is not None:
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
            print(f"--- cProfile {size} (own time) ---\n{out.getvalue()}", file=sys.stderr)
    result = {
        # mean: learning refits every few requests (~0.1 ms), which a median would hide
        "per_request_cpu_us": {s: r["total_us_mean"] for s, r in results.items()},
        "per_request_cpu_us_median": {s: r["total_us_median"] for s, r in results.items()},
        "sizes": results, "caller": args.caller, "warmup": args.warmup,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": sys.version.split()[0], "loadavg": [round(v, 2) for v in os.getloadavg()],
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
    }
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
