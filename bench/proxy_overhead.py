"""Gateway overhead: the real LiteLLM proxy stock, with its pre-call checks, with the dual-pool
plugin, and with the plugin on Redis-backed state, under the same closed-loop load.

Rerun:  .venv/bin/python bench/proxy_overhead.py [--json] [--quick] [--py-spy 10]
        (~9 minutes, start-up included; --quick ~2.5; Redis at 127.0.0.1:6379 for configuration
        d; --py-spy needs `.venv/bin/pip install py-spy==0.4.3`)

Set-up, all processes on 127.0.0.1: two emulated vLLM servers in instant mode (no engine: the
answer comes at once, so what is measured is the proxy), declared to the proxy as a short pool
(max_model_len 8192, or `--short-len`: at 8192 the 32 KB request is in the plugin's near tier,
at 32768 in its far tier) and a long pool (131072) of one model group. Both servers accept any prompt
up to 262144 tokens, so that every configuration answers every request with 200 even where it
does not route by length (a). Five proxies run at once, one per configuration, each a plain
`litellm --config` process with one worker:

    a stock     routing_strategy simple-shuffle
    b precall   a + enable_pre_call_checks, model_info.max_input_tokens on both deployments
                (LiteLLM counts every prompt's tokens with cl100k to filter deployments)
    c plugin    a + the dual-pool plugin (litellm_settings.callbacks), in-memory state
    d redis     c with dualpool_settings.state.backend redis (a unique key prefix, deleted after)
    e null      a + a callback with the plugin's hooks doing nothing (bench/null_callback.py):
                what LiteLLM spends on calling any callback, so c - e is the plugin's own work
    e1-e3       (only with --configs) e plus one thing the plugin does each: the filter keeps
                one deployment (e1), a plan in the request's metadata (e2), two response
                headers (e3); for bisecting what the plugin makes LiteLLM do

Load comes from bench/loadgen.py, a separate process: keep-alive connections in a closed loop,
chat bodies of real MT-Bench text at 1 KB (2 messages), 32 KB (8) and 256 KB (16). One proxy is
driven at a time, in slices of about a second: each cycle gives every proxy one slice, in an
order shuffled per cycle, so that all of them meet the same machine noise (this 2-core machine is
shared); after each slice the proxy gets 0.15 s to finish its deferred work (logging,
learning), charged to it. Two phases per size: "load" (`--concurrency` 4: the proxy saturated; throughput, CPU
per request, latency with queueing) and "latency" (concurrency 1: no queueing, so the added
latency is the added work on the request's path). The cycles of a phase are split into
`--rounds` consecutive groups; the tables give the median and the spread (min..max) across
rounds, and ratios and added latencies are taken per round (the configurations of one
round interleaved), then summarised. Latency: from write to last byte, in the load generator.
A third phase per size, "paired", alternates request by request (`--paired-cycles`, default
1000: one request to each proxy in a shuffled order per cycle, concurrency 1), so that the
latencies of one cycle meet the same machine noise within milliseconds; the added P50 of each
configuration against a (and of the plugin against e) comes with a 95% bootstrap interval over
the cycles. That interval, not a single figure, says whether a 0.2 ms target is resolved.
With `--py-spy SECONDS` the plugin's proxy is then driven alone while py-spy samples it: the
share of its CPU spent under litellm_dualpool frames, which no noise-bound difference between
two proxies can resolve below ~0.3 ms.
"CPU ms/req" is the proxy process's user+system CPU per answered request (/proc/PID/stat, all
threads, the proxy and its worker), far less sensitive to other load on the machine than latency
or throughput; the JSON's `plugin_cpu_per_request_vs_stock` is its ratio, plugin over stock, over
the request-by-request paired phase (`_load`: per round of interleaved load slices, median of
rounds; the headline when no paired phase ran); "wait
ms/req" is the time its event loop was runnable but another process held the core
(/proc/PID/schedstat), i.e. the machine's noise as the proxy felt it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import plugin_stack  # noqa: E402  (the e2e tests' launcher: YAML, ports, health, clean-up)
from plugin_stack import Proxy, offline_env, start_proxy  # noqa: E402

#: Five proxies importing LiteLLM at once on a busy 2-core machine need more than a test's wait.
plugin_stack.PROXY_START_SECONDS = max(plugin_stack.PROXY_START_SECONDS, 300.0)

from litellm_dualpool.emulator.testing import RunningEmulator, start_emulators  # noqa: E402

LOADGEN = Path(__file__).with_name("loadgen.py")
CONFIGS = {"stock": "a", "precall": "b", "plugin": "c", "plugin_redis": "d", "null_callback": "e",
           "null_narrow": "e1", "null_plan": "e2", "null_headers": "e3"}
#: e1-e3 each do one thing the plugin does (bench/null_callback.py): for bisecting, on request
DEFAULT_CONFIGS = ["stock", "precall", "plugin", "plugin_redis", "null_callback"]
NULL_INSTANCES = {"null_callback": "proxy_handler_instance", "null_narrow": "narrowing_instance",
                  "null_plan": "plan_instance", "null_headers": "headers_instance"}
NULL_CALLBACK = Path(__file__).with_name("null_callback.py")
#: size label -> (prompt bytes, messages)
SIZES = {"1KB": (1024, 2), "32KB": (32 * 1024, 8), "256KB": (256 * 1024, 16)}
#: seconds each proxy is driven per cycle (full, --quick); 256 KB is slow through a proxy
SLICE_SECONDS = {"1KB": (1.0, 0.5), "32KB": (1.0, 0.5), "256KB": (1.5, 1.0)}
#: the same at concurrency 1, for latency without queueing
LATENCY_SLICE_SECONDS = {"1KB": (0.5, 0.5), "32KB": (0.5, 0.5), "256KB": (1.0, 0.5)}
#: request-by-request cycles per size for paired latencies (full, --quick)
PAIRED_CYCLES = (1000, 100)
#: bootstrap resamples of the paired cycles for the confidence interval of an added P50
BOOTSTRAP = 1000
#: answers each proxy gives per size before measuring (lazy imports, tokenizer loads)
WARMUP_REQUESTS = 20
SHORT_LEN, LONG_LEN = 8192, 131072
#: what the emulators accept (both): every prompt of the bench fits, whatever the routing
BACKEND_LEN = 262144
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
TARGETS = {"plugin_vs_stock_throughput_32KB_min": 0.97, "added_latency_p50_ms_32KB_max": 0.2,
           "plugin_cpu_per_request_vs_stock_32KB_max": 1.03}


# -- set-up ------------------------------------------------------------------------------------
def model_list(short: RunningEmulator, long: RunningEmulator, *, max_input_tokens: bool,
               short_len: int = SHORT_LEN) -> list[dict[str, Any]]:
    out = []
    for emu, pool, length in ((short, "short", short_len), (long, "long", LONG_LEN)):
        info: dict[str, Any] = {"max_model_len": length, "pool": pool}
        if max_input_tokens:
            info["max_input_tokens"] = length
        out.append({"model_name": "llama",
                    "litellm_params": {"model": "hosted_vllm/m", "api_base": emu.openai_base_url,
                                       "api_key": "none"},
                    "model_info": info})
    return out


def proxy_config(name: str, short: RunningEmulator, long: RunningEmulator, redis_prefix: str,
                 short_len: int = SHORT_LEN) -> dict[str, Any]:
    router: dict[str, Any] = {"routing_strategy": "simple-shuffle"}
    config: dict[str, Any] = {
        "model_list": model_list(short, long, max_input_tokens=name == "precall",
                                 short_len=short_len),
        "router_settings": router,
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    if name == "precall":
        router["enable_pre_call_checks"] = True
    if name.startswith("plugin"):
        config["litellm_settings"] = {"callbacks": ["litellm_dualpool.proxy_handler_instance"]}
        config["dualpool_settings"] = {}
    if name in NULL_INSTANCES:
        config["litellm_settings"] = {"callbacks": [f"null_callback.{NULL_INSTANCES[name]}"]}
    if name == "plugin_redis":
        config["dualpool_settings"]["state"] = {
            "backend": "redis", "key_prefix": redis_prefix,
            "redis": {"host": REDIS_HOST, "port": REDIS_PORT}}
    return config


@contextmanager
def start_proxies(configs: dict[str, dict[str, Any]], work: Path) -> Iterator[dict[str, Proxy]]:
    """All proxies at once (start-up is mostly import time; in parallel it overlaps)."""
    managers: dict[str, AbstractContextManager[Proxy]] = {}
    for name, config in configs.items():
        (work / name).mkdir()
        if name in NULL_INSTANCES:  # imported from the config file's directory
            (work / name / NULL_CALLBACK.name).write_text(NULL_CALLBACK.read_text())
        managers[name] = start_proxy(config, work / name)
    entered: dict[str, Proxy] = {}
    failures: list[BaseException] = []

    def enter(name: str) -> None:
        try:
            entered[name] = managers[name].__enter__()
        except BaseException as error:  # reported below, after every thread is done
            failures.append(error)

    threads = [threading.Thread(target=enter, args=(n,)) for n in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        if failures:
            raise failures[0]
        yield {name: entered[name] for name in configs}
    finally:
        for name in entered:
            managers[name].__exit__(None, None, None)


def proxy_pids(config_path: Path) -> list[int]:
    """Processes whose command line names this proxy's config file (the proxy, one worker)."""
    pids = []
    needle = str(config_path).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def delete_redis_prefix(prefix: str) -> int:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


# -- measuring ---------------------------------------------------------------------------------
def run_loadgen(targets: list[dict[str, Any]], size: str, work: Path, options: list[str],
                timeout: float) -> dict[str, Any]:
    """One load-generator process for one prompt size over every proxy; its JSON result."""
    size_bytes, messages = SIZES[size]
    spec = work / f"targets-{size}.json"
    spec.write_text(json.dumps(targets))
    argv = [sys.executable, str(LOADGEN), "--targets", str(spec),
            "--size-bytes", str(size_bytes), "--messages", str(messages), *options]
    done = subprocess.run(argv, capture_output=True, text=True, env=offline_env(), check=False,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def drive_size(targets: list[dict[str, Any]], size: str, work: Path, *, concurrency: int,
               slice_seconds: float, cycles: int, rounds: int, warmup_requests: int
               ) -> dict[str, list[dict[str, Any]]]:
    """Every proxy driven in turn, slice by slice, interleaved; the slices per configuration."""
    options = ["--concurrency", str(concurrency), "--slice", str(slice_seconds),
               "--cycles", str(cycles), "--rounds", str(rounds),
               "--warmup-requests", str(warmup_requests)]
    budget = cycles * len(targets) * (slice_seconds + 5) + 300
    slices: dict[str, list[dict[str, Any]]] = run_loadgen(targets, size, work, options,
                                                          budget)["slices"]
    return slices


def drive_alternate(targets: list[dict[str, Any]], size: str, work: Path, *, cycles: int,
                    warmup_requests: int) -> dict[str, dict[str, Any]]:
    """One request at a time to each proxy in turn; per configuration its paired run."""
    options = ["--concurrency", "1", "--alternate", str(cycles),
               "--warmup-requests", str(warmup_requests)]
    runs: dict[str, dict[str, Any]] = run_loadgen(targets, size, work, options,
                                                  cycles * len(targets) * 5 + 300)["alternate"]
    return runs


def paired_latency(measured: dict[str, dict[str, Any]], names: list[str], reference: str,
                   seed: int = 0) -> dict[str, Any]:
    """Per configuration, against `reference`, over the cycles where both answered: P50(x) -
    P50(reference) with a 95% bootstrap interval (cycles resampled, pairs kept together),
    and the median of the per-cycle differences."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ref = measured[reference]["latencies_ms"]
    out: dict[str, Any] = {}
    for name in names:
        if name == reference:
            continue
        pairs = np.array([(x, y) for x, y in zip(measured[name]["latencies_ms"], ref, strict=True)
                          if x is not None and y is not None])
        if len(pairs) == 0:
            continue
        picks = rng.integers(0, len(pairs), size=(BOOTSTRAP, len(pairs)))
        boot = (np.median(pairs[:, 0][picks], axis=1) - np.median(pairs[:, 1][picks], axis=1))
        out[name] = {"added_p50_ms": round(float(np.median(pairs[:, 0]) - np.median(pairs[:, 1])), 3),
                     "ci95_ms": [round(float(v), 3) for v in np.percentile(boot, [2.5, 97.5])],
                     "median_of_differences_ms": round(float(np.median(pairs[:, 0] - pairs[:, 1])), 3),
                     "pairs": len(pairs)}
    return out


def paired_figures(measured: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: P50/P99 and CPU per request over the alternating run."""
    out = {}
    for name, run in measured.items():
        ok = sorted(v for v in run["latencies_ms"] if v is not None)
        n = len(run["latencies_ms"])
        out[name] = {"requests": n, "p50_ms": round(_quantile(ok, 0.5), 3),
                     "p99_ms": round(_quantile(ok, 0.99), 3),
                     "proxy_cpu_ms_per_request": round(1000.0 * run["cpu_s"] / max(n, 1), 3),
                     "statuses": run["statuses"]}
    return out


def per_round(slices: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """Each round's figures from its slices (throughput: answers over the slices' time)."""
    out = []
    for r in range(rounds):
        mine = [s for s in slices if s["round"] == r]
        latencies = sorted(v for s in mine for v in s["latencies_ms"])
        n = len(latencies)
        seconds = sum(s["duration_s"] for s in mine)
        out.append({
            "requests": n, "throughput_rps": n / seconds if seconds else 0.0,
            "p50_ms": _quantile(latencies, 0.50), "p99_ms": _quantile(latencies, 0.99),
            "proxy_cpu_ms_per_request": 1000.0 * sum(s["cpu_s"] for s in mine) / max(n, 1),
            # time the proxy's loop was ready to run but another process had the core: noise
            "proxy_cpu_wait_ms_per_request": 1000.0 * sum(s["wait_s"] for s in mine) / max(n, 1),
            "statuses": added(mine, "statuses"), "pools": added(mine, "pools")})
    return out


def added(parts: list[dict[str, Any]], key: str) -> dict[str, int]:
    """The sum of the parts' `key` counters (answers by status, by pool)."""
    return dict(sum((Counter(part[key]) for part in parts), Counter()))


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]], names: list[str]
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per configuration and size: spreads of each figure; per size: paired comparisons)."""
    table: dict[str, Any] = {}
    for name in names:
        table[name] = {}
        for size, rounds in runs[name].items():
            table[name][size] = {
                key: spread([r[key] for r in rounds])
                for key in ("throughput_rps", "p50_ms", "p99_ms", "proxy_cpu_ms_per_request",
                            "proxy_cpu_wait_ms_per_request")}
            table[name][size].update(statuses=added(rounds, "statuses"),
                                     pools=added(rounds, "pools"),
                                     requests=sum(r["requests"] for r in rounds))
    pairs: dict[str, Any] = {}
    for size in runs[names[0]]:
        pairs[size] = {}
        for name in names[1:]:
            pairs[size][name] = {
                "throughput_vs_stock": _paired(runs, name, "stock", size, "throughput_rps", "/"),
                "added_latency_p50_ms": _paired(runs, name, "stock", size, "p50_ms", "-"),
                "added_latency_p99_ms": _paired(runs, name, "stock", size, "p99_ms", "-"),
                "added_proxy_cpu_ms_per_request": _paired(
                    runs, name, "stock", size, "proxy_cpu_ms_per_request", "-"),
                "proxy_cpu_per_request_vs_stock": _paired(
                    runs, name, "stock", size, "proxy_cpu_ms_per_request", "/")}
            if name != "precall":
                pairs[size][name]["throughput_vs_precall"] = _paired(
                    runs, name, "precall", size, "throughput_rps", "/")
            if name.startswith("plugin") and "null_callback" in runs:
                pairs[size][name]["throughput_vs_null_callback"] = _paired(
                    runs, name, "null_callback", size, "throughput_rps", "/")
    return table, pairs


def _paired(runs: dict[str, dict[str, list[dict[str, Any]]]], x: str, y: str, size: str,
            key: str, op: str) -> dict[str, float]:
    """Spread over rounds of x/y (op "/") or x-y (op "-"), each from the same round."""
    values = []
    for mine, theirs in zip(runs[x][size], runs[y][size], strict=True):
        if op == "-":
            values.append(mine[key] - theirs[key])
        else:
            values.append(mine[key] / theirs[key] if theirs[key] else float("nan"))
    return spread(values)


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu_model": model,
            "python": sys.version.split()[0], "litellm": version("litellm"),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


# -- py-spy: the plugin's share of the proxy's CPU ------------------------------------------
def spy_on_plugin(target: dict[str, Any], size: str, work: Path, *, concurrency: int,
                  seconds: float) -> dict[str, Any]:
    """Drive the plugin's proxy alone for `seconds` while py-spy samples it (attached by pid,
    non-blocking, active threads only); the share of samples with a litellm_dualpool frame."""
    spy = Path(sys.executable).with_name("py-spy")
    output = work / f"py-spy-{size}.txt"
    argv = [str(spy), "record", "--pid", str(target["pids"][0]), "--rate", "250",
            "--duration", str(int(seconds) + 2), "--format", "raw", "--output", str(output),
            "--nonblocking"]
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached before the load starts
    measured = drive_size([target], size, work, concurrency=concurrency, slice_seconds=seconds,
                          cycles=1, rounds=1, warmup_requests=0)[target["name"]]
    _, err = sampler.communicate(timeout=seconds + 60)
    if sampler.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy failed ({sampler.returncode}): {err.decode()[-2000:]}")
    total = plugin = 0
    leaves: dict[str, int] = {}
    for line in output.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        if "litellm_dualpool" in stack:
            plugin += int(count)
            leaf = stack.rsplit(";", 1)[-1]
            leaves[leaf] = leaves.get(leaf, 0) + int(count)
    stats = per_round(measured, 1)[0]
    share = plugin / total if total else float("nan")
    return {"samples": total, "plugin_samples": plugin, "plugin_share": round(share, 4),
            "proxy_cpu_ms_per_request": round(stats["proxy_cpu_ms_per_request"], 3),
            "plugin_cpu_ms_per_request": round(share * stats["proxy_cpu_ms_per_request"], 4),
            "top_leaf_frames": dict(sorted(leaves.items(), key=lambda kv: -kv[1])[:8])}


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--quick", action="store_true", help="few short cycles, one round")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
    ap.add_argument("--cycles", type=int, default=None,
                    help="load cycles per size (default 24; --quick 3); rounds split them")
    ap.add_argument("--latency-cycles", type=int, default=None,
                    help="latency cycles per size, concurrency 1 (default 12; --quick 2)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (load)")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--short-len", type=int, default=SHORT_LEN,
                    help="the short pool's max_model_len: 8192 puts the 32 KB request (~7,200 "
                         "tokens) near its limit (the plugin's near tier, learned from every "
                         "time); 32768 puts it far (bytes alone decide, issue 15's common case)")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=DEFAULT_CONFIGS,
                    help="configurations (a and b are always included: the references)")
    ap.add_argument("--paired-cycles", type=int, default=None,
                    help="request-by-request cycles per size for paired latencies "
                         f"(default {PAIRED_CYCLES[0]}; --quick {PAIRED_CYCLES[1]}; 0: none)")
    ap.add_argument("--slice-scale", type=float, default=1.0, help="scale the slice lengths")
    ap.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS",
                    help="then sample the plugin's proxy with py-spy for SECONDS per size "
                         "(pip install py-spy into the venv)")
    args = ap.parse_args(argv)
    quick = 1 if args.quick else 0
    rounds = args.rounds or (1 if args.quick else 3)
    phases = {  # name: (concurrency, cycles, slice seconds per size)
        "load": (args.concurrency, max(args.cycles or (3, 24)[1 - quick], rounds),
                 {s: SLICE_SECONDS[s][quick] * args.slice_scale for s in args.sizes}),
        "latency": (1, max(args.latency_cycles or (2, 12)[1 - quick], rounds),
                    {s: LATENCY_SLICE_SECONDS[s][quick] * args.slice_scale for s in args.sizes}),
    }
    names = [n for n in CONFIGS if n in args.configs or n in ("stock", "precall")]
    redis_prefix = f"dualpool-bench:{uuid.uuid4().hex[:10]}"
    load_start = os.getloadavg()
    started = time.monotonic()
    emulator_flags = {"instant": True, "max_model_len": BACKEND_LEN, "tensor_parallel_size": 8,
                      "served_model_name": "m", "output_len_dist": "fixed:16"}

    runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
        phase: {n: {} for n in names} for phase in phases}
    spied: dict[str, Any] = {}
    paired_cycles = PAIRED_CYCLES[quick] if args.paired_cycles is None else args.paired_cycles
    paired: dict[str, Any] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="dualpool-bench-") as tmp:
        short, long = stack.enter_context(start_emulators(dict(emulator_flags),
                                                          dict(emulator_flags)))
        if "plugin_redis" in names:
            stack.callback(delete_redis_prefix, redis_prefix)
        configs = {n: proxy_config(n, short, long, redis_prefix, args.short_len) for n in names}
        proxies = stack.enter_context(start_proxies(configs, Path(tmp)))
        targets = [{"name": n, "url": proxies[n].url, "key": proxies[n].master_key,
                    "pids": proxy_pids(Path(tmp) / n / "litellm.yaml")} for n in names]
        print(f"# {len(names)} proxies up after {time.monotonic() - started:.0f} s; "
              f"load average {load_start[0]:.2f}", file=sys.stderr)
        for size in args.sizes:
            for phase, (concurrency, cycles, slices) in phases.items():
                measured = drive_size(targets, size, Path(tmp), concurrency=concurrency,
                                      slice_seconds=slices[size], cycles=cycles, rounds=rounds,
                                      warmup_requests=WARMUP_REQUESTS)
                for name in names:
                    runs[phase][name][size] = per_round(measured[name], rounds)
                    for r, result in enumerate(runs[phase][name][size]):
                        print(f"# {size:>5} {phase:<7} round {r + 1}/{rounds} {name:<12} "
                              f"{result['throughput_rps']:7.1f} req/s  "
                              f"p50 {result['p50_ms']:7.2f} ms  "
                              f"cpu {result['proxy_cpu_ms_per_request']:6.2f} ms/req  "
                              f"wait {result['proxy_cpu_wait_ms_per_request']:6.2f} ms/req  "
                              f"{result['statuses']}", file=sys.stderr)
            if paired_cycles > 0:
                measured_pairs = drive_alternate(targets, size, Path(tmp), cycles=paired_cycles,
                                                 warmup_requests=WARMUP_REQUESTS)
                paired[size] = {"configs": paired_figures(measured_pairs),
                                "vs_stock": paired_latency(measured_pairs, names, "stock")}
                if "null_callback" in names:
                    paired[size]["vs_null_callback"] = paired_latency(
                        measured_pairs, [n for n in names
                                         if n.startswith("plugin") or n in NULL_INSTANCES],
                        "null_callback")
                print(f"# {size:>5} paired  {paired_cycles} cycles: "
                      + "  ".join(f"{n} {v['added_p50_ms']:+.2f} ms {v['ci95_ms']}"
                                  for n, v in paired[size]["vs_stock"].items()), file=sys.stderr)
        if args.py_spy > 0 and "plugin" in names:
            for size in args.sizes:
                spied[size] = spy_on_plugin(targets[names.index("plugin")], size, Path(tmp),
                                            concurrency=args.concurrency, seconds=args.py_spy)
    load_end = os.getloadavg()
    summaries = {phase: summarise(runs[phase], names) for phase in phases}
    for phase, (concurrency, _, _) in phases.items():
        print(f"\n{phase} phase: concurrency {concurrency}")
        print_tables(*summaries[phase], names, args.sizes)
    if paired:
        print_paired(paired)
    if spied:
        print("\npy-spy on the plugin's proxy (share of active samples in litellm_dualpool frames)")
        for size, found in spied.items():
            print(f"{size:>6} {found['plugin_share']:.2%} of {found['samples']} samples = "
                  f"{found['plugin_cpu_ms_per_request']:.3f} ms of "
                  f"{found['proxy_cpu_ms_per_request']:.2f} ms CPU per request")
    settings = {"rounds": rounds, "warmup_requests": WARMUP_REQUESTS, "quick": args.quick,
                "short_len": args.short_len,
                "phases": {p: {"concurrency": c, "cycles": n, "slice_s": sl}
                           for p, (c, n, sl) in phases.items()}}
    result = build_result(summaries, names, settings, args.sizes, load_start, load_end,
                          time.monotonic() - started)
    if paired:
        result.update(paired_headlines(paired, names))
        result["settings"]["paired_cycles"] = paired_cycles
        result["targets"].update(paired_targets(paired))
    if spied:
        result["py_spy"] = spied
        result["plugin_cpu_ms_per_request_sampled"] = {
            s: v["plugin_cpu_ms_per_request"] for s, v in spied.items()}
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


def paired_headlines(paired: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The paired phase's figures for the plugin, per size, for the JSON line."""
    def of(reference: str, key: str) -> dict[str, Any]:
        return {s: p[reference]["plugin"][key] for s, p in paired.items()
                if "plugin" in p.get(reference, {})}

    cpu_ratio = {s: round(p["configs"]["plugin"]["proxy_cpu_ms_per_request"]
                          / p["configs"]["stock"]["proxy_cpu_ms_per_request"], 3)
                 for s, p in paired.items() if "plugin" in p["configs"]}

    out: dict[str, Any] = {
        "paired": paired,
        "added_latency_p50_ms_paired": of("vs_stock", "added_p50_ms"),
        "added_latency_p50_ms_paired_ci95": of("vs_stock", "ci95_ms"),
        # CPU per request is what bounds throughput at saturation: a's over c's is the c/a
        # throughput a CPU-bound proxy would show, measured over the same interleaved minutes.
        # request by request, alternating with stock (the same seconds of machine noise for
        # both): the headline `plugin_cpu_per_request_vs_stock` when this phase ran
        "plugin_cpu_per_request_vs_stock_paired": cpu_ratio,
        "plugin_cpu_per_request_vs_stock": cpu_ratio,
        "plugin_vs_stock_cpu_throughput_paired": {
            s: round(p["configs"]["stock"]["proxy_cpu_ms_per_request"]
                     / p["configs"]["plugin"]["proxy_cpu_ms_per_request"], 3)
            for s, p in paired.items() if "plugin" in p["configs"]},
    }
    if "null_callback" in names:
        out["plugin_added_latency_p50_ms_vs_null_callback_paired"] = of("vs_null_callback",
                                                                       "added_p50_ms")
    return out


def paired_targets(paired: dict[str, Any]) -> dict[str, Any]:
    """The added-P50 target judged on the paired phase, with the interval's upper end."""
    found = paired.get("32KB", {}).get("vs_stock", {}).get("plugin")
    if found is None:
        return {}
    configs = paired["32KB"]["configs"]
    cpu = configs["plugin"]["proxy_cpu_ms_per_request"] / configs["stock"][
        "proxy_cpu_ms_per_request"]
    return {"added_latency_p50_ms_32KB_paired_met":
            found["added_p50_ms"] <= TARGETS["added_latency_p50_ms_32KB_max"],
            "added_latency_p50_ms_32KB_paired_ci95_high": found["ci95_ms"][1],
            "plugin_cpu_per_request_vs_stock_32KB_paired_met":
            cpu <= TARGETS["plugin_cpu_per_request_vs_stock_32KB_max"]}


def build_result(summaries: dict[str, tuple[dict[str, Any], dict[str, Any]]], names: list[str],
                 settings: dict[str, Any], sizes: list[str], load_start: tuple[float, ...],
                 load_end: tuple[float, ...], elapsed: float) -> dict[str, Any]:
    load, latency = summaries["load"][1], summaries["latency"][1]

    def headline(pairs: dict[str, Any], config: str, key: str) -> dict[str, float]:
        return {s: pairs[s][config][key]["median"] for s in pairs
                if key in pairs[s].get(config, {})}

    result: dict[str, Any] = {
        "plugin_vs_stock_throughput": headline(load, "plugin", "throughput_vs_stock"),
        "plugin_vs_precall_throughput": headline(load, "plugin", "throughput_vs_precall"),
        "added_latency_p50_ms": headline(latency, "plugin", "added_latency_p50_ms"),
        "added_latency_p99_ms": headline(latency, "plugin", "added_latency_p99_ms"),
        "added_latency_p50_ms_under_load": headline(load, "plugin", "added_latency_p50_ms"),
        "added_proxy_cpu_ms_per_request": headline(load, "plugin",
                                                   "added_proxy_cpu_ms_per_request"),
        # The proxy processes' CPU seconds per answered request (/proc/PID/stat of the proxy
        # and its worker), plugin over stock, per round of interleaved slices, median of
        # rounds: what co-runners on a shared machine disturb far less than wall throughput.
        # `paired_headlines` replaces the headline with the paired phase's when it ran.
        "plugin_cpu_per_request_vs_stock": headline(load, "plugin",
                                                    "proxy_cpu_per_request_vs_stock"),
        "plugin_cpu_per_request_vs_stock_load": headline(load, "plugin",
                                                         "proxy_cpu_per_request_vs_stock"),
        "plugin_cpu_per_request_vs_stock_spread": {
            s: load[s]["plugin"]["proxy_cpu_per_request_vs_stock"] for s in load
            if "plugin" in load[s]},
        "precall_vs_stock_throughput": headline(load, "precall", "throughput_vs_stock"),
        "precall_added_latency_p50_ms": headline(latency, "precall", "added_latency_p50_ms"),
        "redis_plugin_vs_stock_throughput": headline(load, "plugin_redis", "throughput_vs_stock"),
        "null_callback_vs_stock_throughput": headline(load, "null_callback",
                                                      "throughput_vs_stock"),
        "plugin_vs_null_callback_throughput": headline(load, "plugin", "throughput_vs_null_callback"),
        "redis_plugin_added_latency_p50_ms": headline(latency, "plugin_redis",
                                                      "added_latency_p50_ms"),
        "configs": {phase: table for phase, (table, _) in summaries.items()},
        "comparisons": {phase: pairs for phase, (_, pairs) in summaries.items()},
        "settings": {**settings,
                     "sizes": {s: {"bytes": SIZES[s][0], "messages": SIZES[s][1]} for s in sizes},
                     "pools": {"short": settings["short_len"], "long": LONG_LEN},
                     "configs": {n: CONFIGS[n] for n in names}},
        "targets": targets(load, latency),
        "machine": {**machine(), "loadavg_start": [round(v, 2) for v in load_start],
                    "loadavg_end": [round(v, 2) for v in load_end]},
        "elapsed_s": round(elapsed, 1),
    }
    return result


def targets(load: dict[str, Any], latency: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(TARGETS)
    if "32KB" in load:
        out["plugin_vs_stock_throughput_32KB_met"] = (
            load["32KB"]["plugin"]["throughput_vs_stock"]["median"]
            >= TARGETS["plugin_vs_stock_throughput_32KB_min"])
        out["plugin_cpu_per_request_vs_stock_32KB_met"] = (
            load["32KB"]["plugin"]["proxy_cpu_per_request_vs_stock"]["median"]
            <= TARGETS["plugin_cpu_per_request_vs_stock_32KB_max"])
        out["added_latency_p50_ms_32KB_met"] = (
            latency["32KB"]["plugin"]["added_latency_p50_ms"]["median"]
            <= TARGETS["added_latency_p50_ms_32KB_max"])
    for size in ("32KB", "256KB"):
        if size in load:
            out[f"plugin_faster_than_precall_{size}_met"] = (
                load[size]["plugin"]["throughput_vs_precall"]["median"] > 1.0)
    return out


def print_paired(paired: dict[str, Any]) -> None:
    """Request-by-request alternation at concurrency 1: P50, CPU and the added P50 with its
    bootstrap interval, against a (and the plugin against e)."""
    print("\npaired phase: one request to each proxy in turn, concurrency 1")
    print(f"{'size':>6} {'config':<16} {'P50 ms':>8} {'P99 ms':>8} {'CPU ms/req':>10} "
          f"{'+P50 vs a (95% CI)':>26} {'+P50 vs e (95% CI)':>26}")
    for size, found in paired.items():
        for name, row in found["configs"].items():
            cells = []
            for ref in ("vs_stock", "vs_null_callback"):
                v = found.get(ref, {}).get(name)
                cells.append(f"{v['added_p50_ms']:+.3f} ({v['ci95_ms'][0]:+.2f}..{v['ci95_ms'][1]:+.2f})"
                             if v else "")
            print(f"{size:>6} {CONFIGS[name] + ' ' + name:<16} {row['p50_ms']:>8.2f} "
                  f"{row['p99_ms']:>8.2f} {row['proxy_cpu_ms_per_request']:>10.2f} "
                  f"{cells[0]:>26} {cells[1]:>26}")


def print_tables(table: dict[str, Any], pairs: dict[str, Any], names: list[str],
                 sizes: list[str]) -> None:
    """Medians across rounds (throughput also min..max); vs a and +p50: paired per round."""
    print(f"{'size':>6} {'config':<14} {'req/s (min..max)':>24} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU ms/req':>10} {'wait ms/req':>11} {'vs a':>6} {'+p50 ms':>8} {'+CPU ms':>8} "
          f"{'CPU vs a':>8}")
    for size in sizes:
        for name in names:
            row = table[name][size]
            tput = row["throughput_rps"]
            vs = pairs[size].get(name, {})
            ratio = vs.get("throughput_vs_stock", {}).get("median", 1.0)
            added = vs.get("added_latency_p50_ms", {}).get("median", 0.0)
            added_cpu = vs.get("added_proxy_cpu_ms_per_request", {}).get("median", 0.0)
            cpu_ratio = vs.get("proxy_cpu_per_request_vs_stock", {}).get("median", 1.0)
            rate = f"{tput['median']:.1f} ({tput['min']:.1f}..{tput['max']:.1f})"
            print(f"{size:>6} {CONFIGS[name] + ' ' + name:<14} {rate:>24} "
                  f"{row['p50_ms']['median']:>8.2f} {row['p99_ms']['median']:>8.2f} "
                  f"{row['proxy_cpu_ms_per_request']['median']:>10.2f} "
                  f"{row['proxy_cpu_wait_ms_per_request']['median']:>11.2f} {ratio:>6.3f} "
                  f"{added:>+8.2f} {added_cpu:>+8.3f} {cpu_ratio:>8.3f}")
        bad = {n: table[n][size]["statuses"] for n in names
               if set(table[n][size]["statuses"]) - {"200"}}
        if bad:
            print(f"{'':>6} non-200 answers: {bad}")


if __name__ == "__main__":
    raise SystemExit(main())
