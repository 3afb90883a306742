"""The main job end to end: `litellm-dualpool demo` (what `make run` runs) in a short mode.

Real processes on 127.0.0.1: three emulated vLLM instances, the real LiteLLM proxy with the
plugin and proxy_config/demo.yaml, the openai client. With --keep-running the demo prints its
report and keeps the gateway up; SIGTERM must then stop every process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
#: the whole run: proxy start (~10-20 s) + 60 requests at 50x speed-up; generous for CI
RUN_TIMEOUT_SECONDS = 240


def _read_report(process: subprocess.Popen[str], deadline: float) -> tuple[dict, list[str]]:
    lines: list[str] = []
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("{"):
            return json.loads(line), lines
    raise AssertionError("the demo printed no JSON report:\n" + "\n".join(lines[-40:]))


def _log_tail(log_dir: Path, lines: int = 60) -> str:
    """The proxy's log tail, for a failure message."""
    log = log_dir / "litellm-proxy.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2.0)
        return True
    except httpx.HTTPError:
        return False


@pytest.mark.e2e
def test_demo_short_run_reports_zero_lost_and_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true",
           "COLUMNS": "120"}
    env.pop("LITELLM_MASTER_KEY", None)  # the demo must generate one
    process = subprocess.Popen(
        [sys.executable, "-m", "litellm_dualpool.cli", "demo", "--requests", "60",
         "--speedup", "50", "--rate", "6", "--keep-running", "--log-dir", str(tmp_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        report, lines = _read_report(process, time.monotonic() + RUN_TIMEOUT_SECONDS)
        (tmp_path / "demo-output.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert report["requests"] == 60
        assert report["lost"] == 0, (report["lost_examples"], _log_tail(tmp_path))
        assert report["ok"] + report["refused"] == 60
        # the deliberately oversized request gets the plugin's 400 up front
        assert report["refused"] == 1 and report["refusals"] == 1
        pools = report["pools"]
        assert set(pools) == {"short", "long"}
        assert pools["short"]["requests"] > pools["long"]["requests"] > 0
        assert pools["short"]["requests"] + pools["long"]["requests"] == report["ok"]
        assert all(p["p50_ms"] <= p["p99_ms"] for p in pools.values())
        assert report["unknown_pool"] == 0
        # every context-length rejection was served by the long pool, and there was one: the
        # first borderline request is a pasted log that the prose ratio under-counts
        assert report["misroutes"] >= 1
        assert report["misroutes_recovered"] == report["misroutes"]
        # each request is one decision; the recovery hops are counted as recoveries only
        assert "long/misroute_recovery" not in report["reasons"]
        assert {"prose", "code", "cjk"} <= set(report["learned_bytes_per_token"])
        # the gateway learned from (nearly) every answered request, not from a first few
        assert report["learning_samples"].get("learned", 0) >= 0.7 * report["ok"]
        # the planner's prediction (a fraction of the homogeneous fleet's cost; it may be < 0)
        assert report["predicted_saving"]["source"].startswith("planner")
        assert -1.0 < report["predicted_saving_fraction"] < 0.75
        # the gateway stays up for manual use: it answers with the plugin's headers
        gateway = report["gateway"]["url"]
        key = next(line.split("Bearer ")[1].split("'")[0] for line in lines if "Bearer " in line)
        answer = httpx.post(gateway + "/v1/chat/completions",
                            headers={"Authorization": f"Bearer {key}"}, timeout=30,
                            json={"model": "llama-3-70b", "max_tokens": 8,
                                  "messages": [{"role": "user", "content": "Hello"}]})
        assert answer.status_code == 200 and answer.headers["x-dualpool-pool"] == "short"
        # the trace-replay example against the kept gateway: a Mooncake-format trace with a
        # short, a long and a larger-than-every-pool request
        trace = tmp_path / "trace.jsonl"
        trace.write_text("".join(json.dumps({"timestamp": t, "input_length": i, "output_length": o})
                                 + "\n" for t, i, o in ((0, 900, 40), (200, 20_000, 30),
                                                         (400, 70_000, 10))), encoding="utf-8")
        replay = subprocess.run(
            [sys.executable, str(REPO / "examples" / "replay_trace.py"), "--gateway", gateway,
             "--api-key", key, "--trace", str(trace)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr[-2000:]
        replayed = json.loads(replay.stdout.strip().splitlines()[-1])
        assert (replayed["ok"], replayed["refused"], replayed["lost"]) == (2, 1, 0)
        assert replayed["pools"]["short"]["requests"] == replayed["pools"]["long"]["requests"] == 1
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the demo alone: it must stop its children
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        finally:
            if process.stdout is not None:
                process.stdout.close()
    assert code == 0
    urls = [gateway + "/health/liveliness"] + [
        url for urls in report["gateway"]["backends"].values() for url in urls]
    assert not any(_answers(url) for url in urls), "a process of the demo outlived it"
