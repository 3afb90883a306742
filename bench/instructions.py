"""The plugin's hooks in CPU instructions per request, counted by valgrind: a measure that does
not move with the machine's load, for before/after comparisons that CPU time cannot settle here.

Rerun:  .venv/bin/python bench/instructions.py [--json] [--baseline-src DIR]
            [--scenarios far near ambiguous-off] [--sizes 32KB] [--requests 300]
        (needs valgrind, `apt-get install valgrind`; ~3 minutes per tree: importing LiteLLM
        under valgrind is most of it. Baseline tree: `git worktree add /tmp/base <commit>` or
        `git archive <commit> litellm_dualpool | tar -x -C /tmp/base`.)

What runs is bench/profile_plugin.py's request, the same plugin, configuration, bodies and
scenarios (its module docstring): the pre-call hook, the filter and the success event of one
request after another, on 16 distinct bodies of the size, after a warm-up of `--warmup`
requests (the calibration settled). The timed requests run inside one `functools.reduce` call
per scenario and size, and callgrind counts instructions only inside it
(`--collect-atstart=no --toggle-collect=functools_reduce`, one dump after each). The hooks
are driven to completion without an event loop: in these scenarios they never wait (the
ambiguous scenario with arbitration on, which does, is not offered). Each request also builds
its inputs as the proxy would hand them over (the metadata dict, the deployments' copies, the
success event's kwargs): a few thousand instructions, the same in both trees.

Why instructions: on this shared 2-core machine two CPU-time runs of the same code differ by
~10% (docs/performance.md), more than the differences looked for. An instruction count is
exact and repeatable (PYTHONHASHSEED is fixed); it does not see cache misses or branch
mispredictions, so it complements the CPU-time benches, it does not replace them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: the scenarios whose hooks never wait (see the module docstring)
SCENARIOS = ("far", "near", "ambiguous-off")
SIZES = ("1KB", "32KB", "256KB")
#: fewer instructions per counted request than this: a dump of some other reduce call
MIN_INSTRUCTIONS = 10_000


def _finish(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits to its result, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a hook waited: this scenario cannot be counted without an event loop")


def worker(scenarios: list[str], sizes: list[str], requests: int, warmup: int) -> None:
    """Inside valgrind: per (scenario, size) a warm plugin, then `requests` requests inside one
    functools.reduce (the only code counted)."""
    from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

    from litellm_dualpool.emulator.prompt import PromptCounter

    counter = PromptCounter("llama3")
    user = UserAPIKeyAuth(token="0" * 64, api_key="sk-bench",
                          user_role=LitellmUserRoles.PROXY_ADMIN)
    for scenario in scenarios:
        for size in sizes:
            _count_cell(scenario, size, requests, warmup, counter, user)
            print(json.dumps({"scenario": scenario, "size": size}), flush=True)


def _count_cell(scenario: str, size: str, requests: int, warmup: int, counter: Any,
                user: Any) -> None:
    """One (scenario, size): a warm plugin, then `requests` requests inside functools.reduce."""
    import statistics

    from profile_plugin import (
        SIZES as BODY_SIZES,
    )
    from profile_plugin import (
        VARIANTS,
        _turns,
        build_plugin,
        chat_body,
        one_request,
        plugin_config,
        proxy_data,
        success_kwargs,
    )

    size_bytes, messages = BODY_SIZES[size]
    base = chat_body(_turns("mt_bench_question.jsonl"), size_bytes, messages)
    base.update(model="llama", max_tokens=16)
    bodies = []
    for i in range(VARIANTS):
        first = dict(base["messages"][0],
                     content=f"[request {i}] " + base["messages"][0]["content"])
        body = dict(base, messages=[first, *base["messages"][1:]])
        bodies.append((body, counter.chat(body).token_count))
    exact_budget = int(statistics.median(t for _, t in bodies)) + int(base["max_tokens"])
    plugin, router = build_plugin(plugin_config(scenario, exact_budget))
    plugin.ensure_prepared()
    deployments = [dict(d) for d in router.get_model_list(model_name="llama")]
    # the backend's answers, built once (LiteLLM builds them, not the plugin)
    answers = [success_kwargs(proxy_data(body, user), deployments[0], tokens)
               for body, tokens in bodies]

    def one(done: int, i: int) -> int:
        body, _ = bodies[i % VARIANTS]
        data = _finish(plugin.async_pre_call_hook(user, None, proxy_data(body, user),
                                                  "acompletion"))
        chosen = _finish(plugin.async_filter_deployments(
            "llama", [dict(d) for d in deployments], data["messages"], dict(data)))
        template, response = answers[i % VARIANTS]
        params = chosen[0]
        kwargs = dict(template, messages=data["messages"], litellm_params={
            "metadata": data["metadata"], "model_info": params["model_info"],
            "api_base": params["litellm_params"]["api_base"]})
        _finish(plugin.async_log_success_event(kwargs, response, None, None))
        return done + 1

    async def warm() -> None:  # may wait (an early arbitration)
        for i in range(warmup):
            body, tokens = bodies[i % VARIANTS]
            await one_request(plugin, user, body, deployments, tokens)

    asyncio.run(warm())

    async def counted() -> None:  # a running loop, as in the proxy; nothing waits
        functools.reduce(one, range(requests), 0)  # the only reduce call: counted

    asyncio.run(counted())


def _count(tree: Path, scenarios: list[str], sizes: list[str], requests: int,
           warmup: int) -> dict[str, dict[str, float]]:
    """Instructions per request of each (scenario, size) for the plugin in `tree`."""
    with tempfile.TemporaryDirectory() as out:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
                "--collect-atstart=no", "--toggle-collect=functools_reduce",
                "--dump-after=functools_reduce", sys.executable, str(Path(__file__).resolve()),
                "--worker", "--scenarios", *scenarios, "--sizes", *sizes,
                "--requests", str(requests), "--warmup", str(warmup)]
        env = dict(os.environ, PYTHONPATH=str(tree.resolve()), PYTHONHASHSEED="0")
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"valgrind run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        order = [(r["scenario"], r["size"]) for r in _json_lines(done.stdout)]
        dumps = sorted(Path(out).glob("cg.*.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        # LiteLLM's import calls functools.reduce too (a dump of a few thousand instructions):
        # a counted cell is `requests` requests of far more than MIN_INSTRUCTIONS each
        totals = [t for t in map(_total, dumps) if t >= requests * MIN_INSTRUCTIONS]
        if len(totals) != len(order):
            raise SystemExit(f"expected {len(order)} callgrind dumps, found {len(totals)}")
    result: dict[str, dict[str, float]] = {}
    for (scenario, size), total in zip(order, totals, strict=True):
        result.setdefault(scenario, {})[size] = round(total / requests)
    return result


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _total(dump: Path) -> int:
    """The instruction total of one callgrind dump (its `summary:` or `totals:` line)."""
    for line in dump.read_text().splitlines():
        found = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if found:
            return int(found.group(1))
    raise SystemExit(f"no total in {dump}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--baseline-src", type=Path, default=None, metavar="DIR",
                    help="also count the plugin's code in DIR (an older tree)")
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--sizes", nargs="+", choices=SIZES, default=["32KB"])
    ap.add_argument("--requests", type=int, default=300, help="counted requests per cell")
    ap.add_argument("--warmup", type=int, default=600,
                    help="requests first, not counted (past the settled calibration's 512)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.scenarios, args.sizes, args.requests, args.warmup)
        return 0
    if shutil.which("valgrind") is None:
        print("bench/instructions.py needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    trees = {"current": Path(__file__).resolve().parents[1]}
    if args.baseline_src is not None:
        trees = {"baseline": args.baseline_src, **trees}
    counts = {name: _count(tree, args.scenarios, args.sizes, args.requests, args.warmup)
              for name, tree in trees.items()}
    print(f"{'scenario':<14} {'size':>6} " + " ".join(f"{t + ' instr/req':>22}" for t in trees)
          + ("   ratio" if len(trees) == 2 else ""))
    table: dict[str, dict[str, Any]] = {}
    for scenario in args.scenarios:
        for size in args.sizes:
            cell: dict[str, Any] = {t: counts[t][scenario][size] for t in trees}
            if "baseline" in trees:
                cell["ratio"] = round(cell["current"] / cell["baseline"], 4)
            table.setdefault(scenario, {})[size] = cell
            print(f"{scenario:<14} {size:>6} " + " ".join(f"{cell[t]:>22,}" for t in trees)
                  + (f"   {cell['ratio']:.4f}" if "ratio" in cell else ""))
    result = {"instructions_per_request": table, "requests": args.requests,
              "warmup": args.warmup, "baseline_src": str(args.baseline_src or ""),
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "date": datetime.datetime.now(datetime.UTC).isoformat(
                              timespec="seconds")}}
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
