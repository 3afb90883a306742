"""The plugin alone: CPU microseconds per request in its hooks, called in-process the way the proxy
calls them (pre-call hook, filter, success event), with realistic arguments.

Rerun:  .venv/bin/python bench/profile_plugin.py [--json] [--requests 3000] [--profile]
            [--scenario far|band-off|band-stub]
        (--profile: cProfile over the same loop, the top functions by own time, to stderr)
        Before/after on one machine: `git worktree add /tmp/base <older commit>` (or
        `git archive <commit> litellm_dualpool | tar -x -C /tmp/base`), then
        .venv/bin/python bench/profile_plugin.py --json --baseline-src /tmp/base [--repeats 3]
        (each tree measured in its own subprocess, alternating run by run, every scenario)

Scenarios (the estimate's tiers, core/policy.py `tier_of`, make the pools matter):
  far        pools [32768, 131072]: every size is clearly inside one pool (1 KB and 32 KB in the
             short one, 256 KB in the long one), the common case "nowhere near a limit"; the far
             tier decides without character counts. Arbitration on (the default), never asked.
  near       pools [8192, 131072] (issue #15's): the 32 KB body (~7,200 Llama-3 tokens + 16) is
             within 12% of the 8,192 limit; once the calibration has settled its estimate range
             stays inside the short pool: the near tier (character counts, learned from every
             time). 1 KB and 256 KB are far there.
  ambiguous-off / ambiguous-stub
             the short pool's limit set to the median exact budget (prompt + max_tokens) of the
             bodies of the size, so that the optimistic..conservative range straddles it: the
             ambiguous tier. -off: arbitration disabled, the estimate decides. -stub:
             arbitration on, answered by an in-process stub (an httpx.MockTransport on the
             arbiter's client) that returns at once what vLLM's /tokenize returns: {count,
             max_model_len, tokens} with the exact Llama-3 count and that many token ids (the
             answer's bytes are built before timing; parsing them, the request's JSON and
             httpx's own work are the plugin's CPU and are counted). No socket: the kernel's
             and the backend's share of a real call is not in it.
A tree without arbitration settings (before issue #15) gets the same pools and no arbitration.

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


#: pool limits (short, long) per scenario (module docstring); short None: at the exact budget
SCENARIOS: dict[str, tuple[int | None, int]] = {
    "far": (32768, 131072), "near": (8192, 131072),
    "ambiguous-off": (None, 131072), "ambiguous-stub": (None, 131072)}


def plugin_config(scenario: str = "far", exact_budget: int = 8192) -> dict[str, Any]:
    deployments = []
    short, long_ = SCENARIOS[scenario]
    short = exact_budget if short is None else short
    for pool, length, port in (("short", short, 8001), ("long", long_, 8002)):
        deployments.append({
            "model_name": "llama",
            "litellm_params": {"model": "hosted_vllm/m", "api_base": f"http://127.0.0.1:{port}/v1",
                               "api_key": "none"},
            "model_info": {"max_model_len": length, "pool": pool}})
    settings: dict[str, Any] = {}
    if _has_arbitration() and scenario == "ambiguous-off":
        settings["arbitration"] = {"enabled": False}
    return {"model_list": deployments, "dualpool_settings": settings}


def _has_arbitration() -> bool:
    """Whether the plugin's tree has /tokenize arbitration (an older tree rejects the key)."""
    from litellm_dualpool import config

    return hasattr(config, "ArbitrationConfig")


class TokenizeStub:
    """vLLM's /tokenize answer for the request being timed, as an httpx transport handler:
    `tokens` is set before each request; the answer's bytes are built once per count."""

    def __init__(self, max_model_len: int) -> None:
        self.tokens = 0
        self.max_model_len = max_model_len
        self.calls = 0
        self._answers: dict[int, bytes] = {}

    def answer(self, tokens: int) -> bytes:
        found = self._answers.get(tokens)
        if found is None:
            found = self._answers[tokens] = json.dumps(
                {"count": tokens, "max_model_len": self.max_model_len,
                 "tokens": [1000 + i % 100000 for i in range(tokens)], "token_strs": None},
                separators=(",", ":")).encode()  # compact, as vLLM's JSONResponse writes it
        return found

    def __call__(self, request: Any) -> Any:
        import httpx

        self.calls += 1
        return httpx.Response(200, content=self.answer(self.tokens),
                              headers={"content-type": "application/json"})


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
                  caller: str = "admin", warmup: int = 600,
                  scenario: str = "far") -> dict[str, Any]:
    from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

    from litellm_dualpool.emulator.prompt import PromptCounter

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
    exact_budget = int(statistics.median(t for _, t in bodies)) + int(base["max_tokens"])
    config = plugin_config(scenario, exact_budget)
    plugin, router = build_plugin(config)
    plugin.ensure_prepared()
    deployments = [dict(d) for d in router.get_model_list(model_name="llama")]
    user = UserAPIKeyAuth(token="0" * 64, api_key="sk-bench", **(
        {"user_role": LitellmUserRoles.PROXY_ADMIN} if caller == "admin" else {}))
    stub = None
    if scenario == "ambiguous-stub" and getattr(plugin, "arbiter", None) is not None:
        import httpx

        stub = TokenizeStub(config["model_list"][0]["model_info"]["max_model_len"])
        plugin.arbiter._client = httpx.AsyncClient(transport=httpx.MockTransport(stub))
        for _, tokens in bodies:
            stub.answer(tokens)
    for i in range(warmup):  # warm: calibration settled (core/learning.py), caches filled
        body, tokens = bodies[i % VARIANTS]
        if stub is not None:
            stub.tokens = tokens
        await one_request(plugin, user, body, deployments, tokens)
    tiers_before, arbitrations_before = _labelled(plugin, "decisions_by_tier", "tier"), (
        _labelled(plugin, "arbitrations", "outcome"))
    if profile is not None:
        profile.enable()
    times: list[list[int]] = []
    pools: dict[str, int] = {}
    for i in range(requests):
        body, tokens = bodies[i % VARIANTS]
        if stub is not None:
            stub.tokens = tokens
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
        "pools": pools, "learned_bytes_per_token": _learned(plugin), "scenario": scenario,
        "pool_limits": [d["model_info"]["max_model_len"] for d in config["model_list"]],
        # of the timed requests (absent before issue #15)
        "tiers": _minus(_labelled(plugin, "decisions_by_tier", "tier"), tiers_before),
        "arbitrations": _minus(_labelled(plugin, "arbitrations", "outcome"),
                               arbitrations_before),
        "learning_outcomes": _outcomes(plugin),
        "callback_errors": _errors(plugin), "requests": requests,
    }


def _labelled(plugin: Any, metric: str, label: str) -> dict[str, float]:
    """A counter's totals by one label ({} when the tree has no such metric)."""
    out: dict[str, float] = {}
    counter = getattr(plugin.metrics, metric, None)
    for family in counter.collect() if counter is not None else ():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                value = sample.labels[label]
                out[value] = out.get(value, 0.0) + sample.value
    return out


def _minus(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


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


#: sizes the near/ambiguous scenarios are compared at (1 KB and 256 KB are far there too)
BAND_SIZES = ("32KB",)


def _run_tree(src: Path, scenario: str, sizes: list[str],
              args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One measurement of `sizes` in one scenario in a subprocess importing the plugin from
    `src`."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    argv = [sys.executable, str(Path(__file__).resolve()), "--json", "--sizes", *sizes,
            "--requests", str(args.requests), "--warmup", str(args.warmup),
            "--caller", args.caller, "--scenario", scenario]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {size: dict(result["sizes"][size]) for size in sizes}


def compare(args: argparse.Namespace) -> int:
    """Baseline and current trees, alternating run by run on the same machine, in every
    scenario: the means (per hook too) of each run, the median over runs, and current over
    baseline."""
    current_src = Path(__file__).resolve().parents[1]
    trees = {"baseline": args.baseline_src, "current": current_src}
    plan = {sc: (list(args.sizes) if sc == "far" else
                 [s for s in args.sizes if s in BAND_SIZES]) for sc in args.scenarios}
    # the near/ambiguous scenarios only at 32 KB: 1 KB and 256 KB are far there as well
    plan = {sc: sizes for sc, sizes in plan.items() if sizes}
    runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
        t: {sc: {s: [] for s in sizes} for sc, sizes in plan.items()} for t in trees}
    loads: list[list[float]] = []
    for r in range(args.repeats):
        for scenario, sizes in plan.items():
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for tree in order:
                for size, got in _run_tree(trees[tree], scenario, sizes, args).items():
                    runs[tree][scenario][size].append(got)
                loads.append([round(v, 2) for v in os.getloadavg()])
    keys = ("total_us_mean", "pre_call_us_mean", "filter_us_mean", "success_us_mean",
            "total_us_median")
    out: dict[str, Any] = {}
    print(f"{'scenario':<10} {'size':>6} {'hook':<16} {'baseline us':>12} {'current us':>11} "
          f"{'ratio':>7}   (median over runs of per-run figures)")
    for scenario, sizes in plan.items():
        out[scenario] = {}
        for size in sizes:
            cell: dict[str, Any] = {}
            for key in keys:
                base = statistics.median(r[key] for r in runs["baseline"][scenario][size])
                cur = statistics.median(r[key] for r in runs["current"][scenario][size])
                cell[key] = {"baseline": round(base, 2), "current": round(cur, 2),
                             "ratio": round(cur / base, 3) if base else None}
                print(f"{scenario:<10} {size:>6} {key:<16} {base:>12.1f} {cur:>11.1f} "
                      f"{cur / base:>7.3f}")
            last = {t: runs[t][scenario][size][-1] for t in trees}
            for field in ("pool_limits", "pools", "learning_outcomes", "tiers", "arbitrations",
                          "callback_errors"):
                cell[field] = {t: last[t].get(field) for t in trees}
            out[scenario][size] = cell
    result = {"compare": out, "baseline_src": str(args.baseline_src), "repeats": args.repeats,
              "requests": args.requests, "warmup": args.warmup, "caller": args.caller,
              "pool_limits": {sc: {s: runs["current"][sc][s][-1].get("pool_limits")
                                   for s in sizes} for sc, sizes in plan.items()},
              "loadavg_per_run": loads, "runs": runs,
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
                    help="with --baseline-src: runs of each tree per scenario (alternating)")
    ap.add_argument("--scenario", choices=list(SCENARIOS), default="far",
                    help="pools and arbitration (module docstring); alone: the one measured")
    ap.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS),
                    help="with --baseline-src: the scenarios compared (all but far at 32 KB)")
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
                                            args.warmup, args.scenario))
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
        "scenario": args.scenario,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": sys.version.split()[0], "loadavg": [round(v, 2) for v in os.getloadavg()],
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
    }
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
