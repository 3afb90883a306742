"""The whole proxy's CPU instructions per request, stock against the plugin, counted by valgrind:
the form of proxy_overhead.py's `plugin_cpu_per_request_vs_stock` that the machine's load does
not move.

Rerun:  .venv/bin/python bench/proxy_instructions.py [--json] [--configs stock plugin]
            [--short-len 32768] [--sizes 32KB] [--requests 150] [--settle 700]
        (needs valgrind; ~7 minutes per configuration and size on this machine: the proxy
        starts under valgrind in ~45 s, then each request takes ~0.2 s uncounted, ~0.7 s counted)

Set-up as in bench/proxy_overhead.py (its `proxy_config`): two emulated vLLM servers in instant
mode declared as a short pool (`--short-len`: 32768 puts the 32 KB request in the plugin's far
tier, 8192 in its near tier) and a long pool of one model group; per configuration one plain
`litellm --config` process, here under `valgrind --tool=callgrind --instr-atstart=no`
(PYTHONHASHSEED fixed). Per size, the proxy first answers `--settle` requests uninstrumented:
past the learning's settlement (512 observations), so that the plugin learns one ordinary
request in 16, as a proxy that has run a while does. Then instrumentation is switched on,
`--warmup` requests run, the counters are zeroed, `--requests` chat completions are sent one
after another (each body distinct) and callgrind dumps: instructions per request of the whole
proxy process, LiteLLM, the plugin, the event loop and the garbage collector together.

The garbage collector: a full collection walks LiteLLM's ~750,000 objects (~250 million
instructions) and comes every few thousand requests, so whether one falls inside a window of a
few hundred requests is chance, and one adds ~1.7 million instructions to each request of a
150-request window. The figures are therefore given with and without the collector
(`gc_collect_main`'s inclusive count); the ratio `excluding_gc` is the headline, and
`gc_per_request` shows what fell in the window. How often full collections come in each
proxy over thousands of requests is for bench/proxy_overhead.py's long runs, not this one.

Why instructions: on this shared 2-core machine CPU seconds per request move by several percent
from run to run, as much as the difference looked for (docs/performance.md). An instruction
count is exact and repeatable; it does not see cache misses, which cost the plugin's hooks more
inside the proxy than alone (LiteLLM's ~18 ms of work per request evicts them), so the CPU-time
ratio can be somewhat higher than this one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_overhead import (
    BACKEND_LEN,
    NULL_CALLBACK,
    NULL_INSTANCES,
    SIZES,
    proxy_config,
)

from litellm_dualpool.emulator.testing import start_emulators
from litellm_dualpool.processes import ManagedProcess, free_port, spawn, wait_healthy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from plugin_stack import offline_env

CONFIGS = ("stock", "plugin", "null_callback")
#: seconds a proxy may take to start under valgrind (~45 s on an idle machine)
START_SECONDS = 600.0
#: the collector's entry point: its inclusive count is all the collection work
GC_FUNCTION = "gcmodule.c:gc_collect_main"
EMULATOR_FLAGS = {"instant": True, "max_model_len": BACKEND_LEN, "tensor_parallel_size": 8,
                  "served_model_name": "m", "output_len_dist": "fixed:16"}


def bodies(size: str, count: int, offset: int) -> Iterator[dict[str, Any]]:
    """`count` chat bodies of `size` (proxy_overhead's text), each distinct in its last message."""
    from dispatch_overhead import _turns, chat_body

    size_bytes, messages = SIZES[size]
    base = chat_body(_turns("mt_bench_question.jsonl"), size_bytes, messages)
    base.update(model="llama", max_tokens=16)
    last = base["messages"][-1]
    for i in range(offset, offset + count):
        yield dict(base, messages=[*base["messages"][:-1],
                                   dict(last, content=f"[request {i}] " + last["content"])])


@contextmanager
def proxy_under_callgrind(config: dict[str, Any], work: Path, name: str, cache_sim: bool = False
                          ) -> Iterator[tuple[ManagedProcess, str, str]]:
    """(process, url, master key) of a proxy started under callgrind, instrumentation off."""
    path = work / "litellm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port, key = free_port(), "sk-" + secrets.token_hex(16)
    litellm = Path(sys.executable).with_name("litellm")
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            *(["--cache-sim=yes"] if cache_sim else []),
            f"--callgrind-out-file={work}/callgrind.out.%p", str(litellm), "--config", str(path),
            "--host", "127.0.0.1", "--port", str(port)]
    env = offline_env(LITELLM_MASTER_KEY=key, PYTHONHASHSEED="0")
    with spawn(f"proxy-{name}", argv, work / "proxy.log", env=env, cwd=work) as child:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(child, url + "/health/liveliness", START_SECONDS)
        yield child, url, key


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def count_config(name: str, config: dict[str, Any], size: str, work: Path, *, settle: int,
                 warmup: int, requests: int, cache_sim: bool = False) -> dict[str, Any]:
    """Instructions per request of one proxy configuration at one size."""
    with proxy_under_callgrind(config, work, name, cache_sim) as (child, url, key), httpx.Client(
            headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        def send(batch: Iterator[dict[str, Any]]) -> httpx.Response:
            response = None
            for body in batch:
                response = client.post(url + "/v1/chat/completions", json=body)
                if response.status_code != 200:
                    raise SystemExit(f"{name}: {response.status_code} {response.text[:300]}")
            assert response is not None
            return response

        pid = str(child.pid)
        send(bodies(size, settle, 0))
        callgrind_control("--instr=on", pid)
        send(bodies(size, warmup, settle))
        time.sleep(1.0)  # the last request's deferred work (logging, learning) is done
        callgrind_control("--zero", pid)
        last = send(bodies(size, requests, settle + warmup))
        time.sleep(1.0)
        callgrind_control("--dump", pid)
        dump = wait_for_dump(work, child.pid)
    events = dump_events(dump)
    total, gc = events["Ir"], inclusive_cost(dump, GC_FUNCTION)
    cell = {"instructions_per_request": round(total / requests),
            "excluding_gc": round((total - gc) / requests),
            "gc_per_request": round(gc / requests),
            "pool": last.headers.get("x-dualpool-pool")}
    if cache_sim:
        cell.update(cache_figures(events, requests))
    return cell


def wait_for_dump(work: Path, pid: int, seconds: float = 120.0) -> Path:
    """The dump `callgrind_control --dump` asked for (``callgrind.out.PID.1``), once written."""
    deadline = time.monotonic() + seconds
    path = work / f"callgrind.out.{pid}.1"
    while time.monotonic() < deadline:
        if path.exists() and "totals:" in path.read_text()[-4000:]:
            return path
        time.sleep(1.0)
    raise SystemExit(f"no callgrind dump at {path}")


def dump_total(dump: Path) -> int:
    """The instruction total of one callgrind dump (its `summary:` or `totals:` line)."""
    return dump_events(dump)["Ir"]


def dump_events(dump: Path) -> dict[str, int]:
    """Every event's total in one callgrind dump (`events:` names the columns of `summary:`)."""
    names: list[str] = []
    for line in dump.read_text().splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        found = re.match(r"(?:summary|totals):((?:\s+\d+)+)\s*$", line)
        if found and names:
            return dict(zip(names, map(int, found.group(1).split()), strict=False))
    raise SystemExit(f"no total in {dump}")


def cache_figures(events: dict[str, int], requests: int) -> dict[str, int]:
    """Per request: L1 misses (instruction and data), last-level misses, and callgrind's cycle
    estimate Ir + 10 L1 misses + 100 LL misses (callgrind_annotate's), from a --cache-sim run."""
    l1 = events["I1mr"] + events["D1mr"] + events["D1mw"]
    ll = events["ILmr"] + events["DLmr"] + events["DLmw"]
    return {"l1_misses_per_request": round(l1 / requests),
            "ll_misses_per_request": round(ll / requests),
            "estimated_cycles_per_request": round((events["Ir"] + 10 * l1 + 100 * ll) / requests)}


def inclusive_cost(dump: Path, function: str) -> int:
    """The inclusive instruction count of `function` ("file.c:name"; callgrind_annotate's
    spelling, recursion levels summed at the outermost), 0 where it never ran."""
    done = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--show=Ir",
                           str(dump)],
                          capture_output=True, text=True, check=True)
    return inclusive_from_annotation(done.stdout, function)


def inclusive_from_annotation(text: str, function: str) -> int:
    """The largest count on a line of callgrind_annotate's output naming `function` exactly
    (its file path ends with it; inlined copies and recursion levels count once)."""
    pattern = re.compile(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S+?)(?:'\d+)?(?:\s+\[.*\])?\s*$")
    best = 0
    for line in text.splitlines():
        found = pattern.match(line)
        if found and (found.group(2) == function or found.group(2).endswith("/" + function)):
            best = max(best, int(found.group(1).replace(",", "")))
    return best


def machine() -> dict[str, Any]:
    return {"date": datetime.date.today().isoformat(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True,
                                       text=True).stdout.strip()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=["stock", "plugin"])
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["32KB"])
    ap.add_argument("--short-len", type=int, default=32768,
                    help="the short pool's max_model_len (32768: the 32 KB request is far from "
                         "it; 8192: near it)")
    ap.add_argument("--requests", type=int, default=150, help="counted requests per cell")
    ap.add_argument("--warmup", type=int, default=40, help="instrumented, uncounted requests")
    ap.add_argument("--settle", type=int, default=700,
                    help="uninstrumented requests first (past the learning's settlement)")
    ap.add_argument("--cache-sim", action="store_true",
                    help="also simulate the caches (L1, last level; ~2x slower): misses and "
                         "callgrind's cycle estimate per request")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    names = ["stock", *[n for n in args.configs if n != "stock"]]
    started = time.monotonic()
    cells: dict[str, dict[str, Any]] = {size: {} for size in args.sizes}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="dualpool-instr-") as tmp:
        short, long = stack.enter_context(start_emulators(dict(EMULATOR_FLAGS),
                                                          dict(EMULATOR_FLAGS)))
        for size in args.sizes:
            for name in names:
                work = Path(tmp) / f"{name}-{size}"
                work.mkdir()
                if name in NULL_INSTANCES:  # imported from the config file's directory
                    (work / NULL_CALLBACK.name).write_text(NULL_CALLBACK.read_text())
                config = proxy_config(name, short, long, "unused", short_len=args.short_len)
                cells[size][name] = count_config(name, config, size, work, settle=args.settle,
                                                 warmup=args.warmup, requests=args.requests,
                                                 cache_sim=args.cache_sim)
                print(f"{size} {name}: {cells[size][name]}", file=sys.stderr, flush=True)
    keys = ["instructions_per_request", "excluding_gc",
            *(["estimated_cycles_per_request"] if args.cache_sim else [])]
    ratios = {size: {name: {key: round(cell[key] / cells[size]["stock"][key], 4) for key in keys}
                     for name, cell in row.items() if name != "stock"}
              for size, row in cells.items()}
    result = {"machine": machine(), "seconds": round(time.monotonic() - started),
              "short_len": args.short_len, "requests": args.requests, "settle": args.settle,
              "cells": cells, "vs_stock": ratios}
    for size, row in ratios.items():
        for name, ratio in row.items():
            print(f"{size} {name} / stock: {ratio['excluding_gc']:.4f} excluding the collector, "
                  f"{ratio['instructions_per_request']:.4f} with it "
                  f"({cells[size][name]['gc_per_request']:,} vs "
                  f"{cells[size]['stock']['gc_per_request']:,} collector instructions/request)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
