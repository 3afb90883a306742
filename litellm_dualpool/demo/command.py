"""`litellm-dualpool demo` (what `make run` runs): the gateway on emulated pools, a workload, a report.

It starts the emulated vLLM instances its YAML declares (2 short at max_model_len 8192, 1 long
at 65536 in the packaged one; Llama-3-70B on 4x A100 each, sped up), the real ``litellm`` proxy with the packaged ``demo.yaml`` (the same
file as ``proxy_config/demo.yaml``; a test keeps them identical) on
127.0.0.1, replays the built-in Azure-like workload (or ``--trace FILE``) through it with the
openai client, prints a report and, as its last line, one JSON object. Exit status: 0 when no
request was lost, 1 when any was, 2 when the stack could not start. Everything it started is
stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from litellm_dualpool.commands.common import add_json_flag
from litellm_dualpool.demo import report as rpt
from litellm_dualpool.demo.orchestrator import (
    EmulatedPool,
    EngineFlags,
    Stack,
    StackError,
    pools_of_config,
)
from litellm_dualpool.demo.replay import Outcome, Replayer, Status
from litellm_dualpool.demo.workload import (
    RequestSpec,
    WorkloadSettings,
    builtin_workload,
    load_trace,
)
from litellm_dualpool.processes import ProcessStartError

MODEL_GROUP = "llama-3-70b"
#: the demo's LiteLLM YAML, shipped inside the package so that an installed wheel finds it
#: (proxy_config/demo.yaml is the same file, for readers of the repository)
PACKAGED_CONFIG = "demo.yaml"
#: how often the proxy's /metrics is read during the run (learned ratios over time)
METRICS_POLL_SECONDS = 2.0
#: progress points at which the learned ratios are shown in the report
RATIO_MILESTONES = (0.1, 0.25, 0.5, 0.75)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    load = parser.add_argument_group("workload")
    size = load.add_mutually_exclusive_group()
    size.add_argument("--requests", type=int, default=300,
                      help="requests to send (default %(default)s)")
    size.add_argument("--duration", type=float, default=None,
                      help="seconds of arrivals instead of a request count (requests = rate x duration)")
    load.add_argument("--rate", type=float, default=5.0,
                      help="mean arrival rate, requests/s (Poisson; default %(default)s)")
    load.add_argument("--concurrency", type=int, default=16,
                      help="requests in flight at most (default %(default)s)")
    load.add_argument("--trace", type=Path, default=None,
                      help="replay an Azure 2023 CSV or a Mooncake JSONL (its lengths; arrivals "
                           "rescaled to --rate, first --requests rows)")
    load.add_argument("--seed", type=int, default=7, help="workload seed (default %(default)s)")
    stack = parser.add_argument_group("stack")
    stack.add_argument("--speedup", type=float, default=20.0,
                       help="emulated GPU time per wall second (default %(default)s)")
    stack.add_argument("--config", type=Path, default=None,
                       help="LiteLLM YAML (default: the packaged demo.yaml, the same as "
                            "proxy_config/demo.yaml)")
    stack.add_argument("--log-dir", type=Path, default=None,
                       help="keep the processes' logs here (default: a temporary directory, "
                            "removed after a clean run)")
    stack.add_argument("--keep-running", action="store_true",
                       help="after the report, keep the gateway up for manual curl until Ctrl-C")
    add_json_flag(parser, "stdout carries only the report's JSON object; the human report goes "
                          "to stderr (without --json the JSON is stdout's last line)")


def _workload(args: argparse.Namespace, pools: tuple[EmulatedPool, ...]) -> list[RequestSpec]:
    requests = args.requests
    if args.duration is not None:
        requests = max(1, round(args.duration * args.rate))
    largest = max(p.max_model_len for p in pools)
    if args.trace is not None:
        return load_trace(args.trace, limit=requests, rate_per_s=args.rate, seed=args.seed,
                          largest_limit_tokens=largest)
    return builtin_workload(WorkloadSettings(
        requests=requests, rate_per_s=args.rate, seed=args.seed,
        short_limit_tokens=min(p.max_model_len for p in pools), largest_limit_tokens=largest))


class _Stop(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C (not an Exception: no handler may swallow it)."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    if args.config is None:
        resource = importlib.resources.files("litellm_dualpool.demo").joinpath(PACKAGED_CONFIG)
        with importlib.resources.as_file(resource) as path:
            args.config = path
            return _run_with_config(args)
    return _run_with_config(args)


def _run_with_config(args: argparse.Namespace) -> int:
    console = Console(stderr=True) if args.json else Console()
    errors = Console(stderr=True)
    if not args.config.exists():
        errors.print(f"litellm-dualpool demo: config {args.config} not found (use --config)")
        return 2
    if args.rate <= 0 or args.concurrency < 1 or args.speedup <= 0:
        errors.print("litellm-dualpool demo: --rate, --concurrency and --speedup must be positive")
        return 2
    try:
        pools = pools_of_config(args.config)
    except (StackError, OSError, ValueError, KeyError, TypeError) as exc:
        errors.print(f"litellm-dualpool demo: cannot read the pools of {args.config}: {exc}")
        return 2
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="dualpool-demo-"))
    stack = Stack(config_path=args.config, log_dir=log_dir, pools=pools,
                  engine=EngineFlags(speedup=args.speedup, seed=args.seed))
    clean = False
    try:
        code = _run(args, stack, console, errors)
        clean = code == 0
        return code
    except ProcessStartError as exc:  # StackError included
        errors.print(f"[red]litellm-dualpool demo: could not start the stack:[/red] {exc}")
        errors.print(f"logs of the demo's processes: {log_dir}")
        return 2
    except (KeyboardInterrupt, _Stop):
        errors.print("litellm-dualpool demo: interrupted; stopping everything it started")
        errors.print(f"logs of the demo's processes: {log_dir}")
        return 130
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if clean and args.log_dir is None:
            shutil.rmtree(log_dir, ignore_errors=True)


def _run(args: argparse.Namespace, stack: Stack, console: Console, errors: Console) -> int:
    started = time.monotonic()
    specs = _workload(args, stack.pools)
    console.print(f"[bold]litellm-dualpool demo[/bold]: {len(specs)} requests at "
                  f"{args.rate}/s, concurrency {args.concurrency}, emulated Llama-3-70B on "
                  f"A100 x{stack.engine.tensor_parallel_size} at {args.speedup}x speed")
    console.print("pools: " + ", ".join(f"{p.name} {p.instances}x max_model_len "
                                        f"{p.max_model_len} / max_num_seqs {p.max_num_seqs}"
                                        for p in stack.pools))
    # the proxy needs 10-20 s to boot: write the request bodies meanwhile
    with ThreadPoolExecutor(max_workers=1) as pool:
        booting: Future[None] = pool.submit(stack.start)
        try:
            console.print("starting emulated vLLM instances and the LiteLLM proxy; "
                          "writing request texts from offline sources ...")
            from litellm_dualpool.demo.synth import Synthesizer

            synth = Synthesizer("llama3", seed=args.seed)
            bodies = {spec.index: synth.body(spec, MODEL_GROUP) for spec in specs}
            booting.result()
        except BaseException:
            stack.cancel()  # the start thread stops waiting; run()'s finally stops the processes
            raise
    console.print(f"gateway up at {stack.proxy_url} after {time.monotonic() - started:.0f} s "
                  f"(logs: {stack.log_dir})")
    true_ratios = {str(k): round(p.bytes_per_token, 2) for k, p in synth.pools.items()}
    outcomes, snapshots, replay_s = asyncio.run(
        _replay(specs, bodies, stack, console, args.concurrency))
    metrics = rpt.parse_metrics(_scrape(stack.proxy_url + "/metrics", stack.master_key))
    backend_metrics = {f"{pool}-{i}": rpt.parse_metrics(_scrape(url.removesuffix("/v1") + "/metrics"))
                       for pool, urls in stack.backends.items() for i, url in enumerate(urls)}
    saving = rpt.predicted_saving(specs, min(p.max_model_len for p in stack.pools))
    report = rpt.summary(specs=specs, outcomes=outcomes, metrics=metrics,
                         pool_instances={p.name: p.instances for p in stack.pools},
                         snapshots=snapshots, saving=saving, true_ratios=true_ratios,
                         wall_s=time.monotonic() - started, backend_metrics=backend_metrics)
    report["replay_s"] = round(replay_s, 1)
    report["gateway"] = {"url": stack.proxy_url, "backends": stack.backends}
    rpt.render(report, console)
    if args.keep_running:
        _print_curl(stack, console)
    code = 1 if report["lost"] else 0
    if code:
        console.print(f"[red]{report['lost']} request(s) lost[/red]; logs of the demo's "
                      f"processes: {stack.log_dir}")
    console.file.flush()
    print(json.dumps(report, separators=(",", ":")), flush=True)  # the last line of output
    if args.keep_running:
        with contextlib.suppress(KeyboardInterrupt, _Stop):
            _wait_forever()
    return code


async def _replay(specs: list[RequestSpec], bodies: dict[int, dict[str, Any]], stack: Stack,
                  console: Console, concurrency: int,
                  ) -> tuple[list[Outcome], list[rpt.RatioSnapshot], float]:
    done: list[Outcome] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True,
                        disable=not console.is_terminal)
    task = progress.add_task("replaying", total=len(specs))
    milestones = iter(sorted({max(1, round(len(specs) * m)) for m in RATIO_MILESTONES}))
    next_milestone = [next(milestones, None)]

    def on_outcome(outcome: Outcome) -> None:
        done.append(outcome)
        lost = sum(o.status is Status.LOST for o in done)
        refused = sum(o.status is Status.REFUSED for o in done)
        progress.update(task, advance=1,
                        description=f"replaying: lost {lost}, refused {refused}")
        if not console.is_terminal and len(done) % max(1, len(specs) // 10) == 0:
            console.print(f"  {len(done)}/{len(specs)} done, lost {lost}, refused {refused}")

    replayer = Replayer(stack.proxy_url + "/v1", stack.master_key, lambda s: bodies[s.index],
                        pool_of_api_base=stack.pool_of_api_base(), on_outcome=on_outcome,
                        concurrency=concurrency)
    snapshots: list[rpt.RatioSnapshot] = []
    start = time.monotonic()
    stop = asyncio.Event()

    async def poll() -> None:
        async with httpx.AsyncClient(timeout=5.0, follow_redirects=True) as client:
            while not stop.is_set():
                target = next_milestone[0]
                if target is not None and len(done) >= target:
                    try:
                        response = await client.get(stack.proxy_url + "/metrics",
                                                    headers=_auth(stack.master_key))
                        ratios = rpt.learned_ratios(rpt.parse_metrics(response.text))
                        snapshots.append(rpt.RatioSnapshot(len(done), time.monotonic() - start,
                                                           ratios))
                    except (httpx.HTTPError, ValueError):
                        pass
                    next_milestone[0] = next(milestones, None)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), METRICS_POLL_SECONDS / 4)

    with progress:
        poller = asyncio.create_task(poll())
        try:
            outcomes = await replayer.run(specs)
        finally:
            stop.set()
            await poller
    return outcomes, snapshots, time.monotonic() - start


def _auth(master_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {master_key}"}


def _scrape(url: str, master_key: str | None = None) -> str:
    try:
        response = httpx.get(url, headers=_auth(master_key) if master_key else None, timeout=10,
                             follow_redirects=True)
        return response.text if response.status_code == 200 else ""
    except httpx.HTTPError:
        return ""


def _print_curl(stack: Stack, console: Console) -> None:
    console.rule("gateway kept running (Ctrl-C to stop)")
    console.print(
        f"curl -s {stack.proxy_url}/v1/chat/completions -H 'Authorization: Bearer "
        f"{stack.master_key}' -H 'Content-Type: application/json' -d '{{\"model\": "
        f"\"{MODEL_GROUP}\", \"max_tokens\": 32, \"messages\": [{{\"role\": \"user\", "
        f"\"content\": \"Hello\"}}]}}' -D - | grep -i -e x-dualpool -e x-litellm-model-api-base",
        soft_wrap=True)
    console.print(f"metrics: curl -s {stack.proxy_url}/metrics -H 'Authorization: Bearer "
                  f"{stack.master_key}' | grep ^dualpool_", soft_wrap=True)


def _wait_forever() -> None:
    """Block until Ctrl-C or SIGTERM (both unwind through run()'s finally)."""
    threading.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="litellm-dualpool demo")
    configure(parser)
    sys.exit(run(parser.parse_args()))
