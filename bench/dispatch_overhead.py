"""Dispatch overhead: shape + estimate + decide, against litellm.token_counter on the same bodies.

Rerun:  .venv/bin/python bench/dispatch_overhead.py [--json] [--repeat-scale 1.0]

Bodies: chat requests of about 1 KB, 32 KB and 512 KB in 2, 8 and 32 messages (a system
message, then user/assistant turns of real MT-Bench English text). "details" adds the same sizes
in Japanese (non-ASCII: the shaper must encode those to count UTF-8 bytes) and in many 256-byte
messages (the cost per message, ~1 us in CPython, then dominates). Each call is timed alone with
perf_counter_ns; the figures are the median and p99 over many calls, after a warm-up. The
estimator's calibrator is warmed with a few observations first, as in a running proxy.
`litellm.token_counter(model="gpt-3.5-turbo", messages=...)` runs offline
(LITELLM_LOCAL_MODEL_COST_MAP=True) with its bundled cl100k tokenizer.

"far_us_median": the same body estimated as the proxy does it (tiered, with the pools' limits)
against pools it is far from (`FAR_POOLS`: the 1 KB and 32 KB bodies clearly inside the short
pool, the 512 KB body clearly beyond it), so that the bytes alone decide: no character counts
(core.policy.Tier.FAR). "dualpool_us_median" stays the full (near-tier) estimate.

--breakdown adds "far_breakdown": the far path's stages timed alone per size (medians, us):
walk (`measure_request`: one pass over the body for its sizes, UTF-8 encoding the non-ASCII
strings), utf8_encode (the part of the walk that encodes those strings), bytes_shape (building
the `RequestShape`), far_range (`Calibrator.estimate_far`), estimate (the whole tiered
`Estimator.estimate`) and decide (`core.policy.decide`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

from litellm_dualpool.core.calibration import Calibrator, CategoryKey
from litellm_dualpool.core.estimator import Estimator
from litellm_dualpool.core.policy import PolicySettings, PoolState, decide

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts"
SIZES = {"1KB": 1024, "32KB": 32 * 1024, "512KB": 512 * 1024}
#: messages per body: a short chat, a working conversation, a long agent/RAG transcript
MESSAGES = {"1KB": 2, "32KB": 8, "512KB": 32}
#: bytes per message of the "many short messages" variant reported in details
SHORT_MESSAGE_BYTES = 256
#: calls timed per size (dualpool, token_counter), scaled by --repeat-scale
REPEATS = {"1KB": (5000, 300), "32KB": (3000, 60), "512KB": (500, 8)}
POOLS = [PoolState("short", 8192, 0.3), PoolState("long", 65536, 0.1)]
#: pools each body is far from (see the module docstring)
FAR_POOLS = {"1KB": (8192, 65536), "32KB": (32768, 131072), "512KB": (8192, 1048576)}


def _turns(name: str) -> list[str]:
    with open(DATA / name, encoding="utf-8") as fh:
        return [t for line in fh for t in json.loads(line)["turns"]]


def chat_body(turns: list[str], size_bytes: int, messages: int) -> dict[str, Any]:
    """A system message then `messages - 1` alternating user/assistant turns whose contents add
    up to about `size_bytes` UTF-8 bytes (real texts joined by blank lines)."""
    per_message = max(size_bytes // messages, 1)
    out: list[dict[str, Any]] = []
    i = 0
    for m in range(messages):
        parts, used = [], 0
        while used < per_message:
            text = turns[i % len(turns)]
            i += 1
            raw = text.encode()[: per_message - used]
            parts.append(raw.decode("utf-8", "ignore"))
            used += len(raw) + 2
        role = "system" if m == 0 else ("user" if m % 2 else "assistant")
        out.append({"role": role, "content": "\n\n".join(parts)})
    if out[-1]["role"] != "user":
        out.append({"role": "user", "content": "Go on."})
    return {"model": "gpt-3.5-turbo", "messages": out, "max_tokens": 512}


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    for _ in range(min(20, repeats)):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - start) / 1000.0)
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--repeat-scale", type=float, default=1.0, help="scale the call counts")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the far path's stages alone (module docstring)")
    args = ap.parse_args(argv)

    import litellm  # only here: the bench compares against it

    estimator = Estimator(Calibrator(), default_output_tokens=1024)
    settings = PolicySettings(headroom_fraction=0.02)
    english, japanese = _turns("mt_bench_question.jsonl"), _turns("japanese_mt_bench_question.jsonl")
    for i in range(20):  # a warmed calibrator, as in a running proxy
        body = chat_body(english[i:], 2000 + 500 * i, 4)
        estimator.learn(estimator.estimate(body, "g"), (2000 + 500 * i) // 4)

    def dualpool(body: dict[str, Any]) -> Callable[[], object]:
        def call() -> object:
            est = estimator.estimate(body, "g")
            return decide(est.budget.total_tokens, POOLS, settings, category=est.key.category)
        return call

    def far(body: dict[str, Any], limits: tuple[int, int]) -> Callable[[], object]:
        pools = [PoolState("short", limits[0], 0.3), PoolState("long", limits[1], 0.1)]

        def call() -> object:
            est = estimator.estimate(body, "g", limits=limits,
                                     headroom_fraction=settings.headroom_fraction)
            return decide(est.budget.total_tokens, pools, settings, category=est.key.category)
        return call

    sizes: dict[str, Any] = {}
    details: dict[str, Any] = {}
    print(f"{'size':>6} {'dualpool med us':>16} {'p99 us':>10} {'token_counter med us':>21} "
          f"{'speedup':>9} {'ja med us':>10} {'far med us':>11} {'far speedup':>12}")
    for label, size in SIZES.items():
        n_ours, n_tc = (max(3, int(r * args.repeat_scale)) for r in REPEATS[label])
        body = chat_body(english, size, MESSAGES[label])
        ours = time_calls(dualpool(body), n_ours)
        tc = time_calls(lambda b=body: litellm.token_counter(model=b["model"],
                                                             messages=b["messages"]), n_tc)
        ja = time_calls(dualpool(chat_body(japanese, size, MESSAGES[label])), n_ours)
        many = time_calls(dualpool(chat_body(english, size, size // SHORT_MESSAGE_BYTES)), n_ours)
        far_tier = estimator.estimate(body, "g", limits=FAR_POOLS[label],
                                      headroom_fraction=settings.headroom_fraction).tier.value
        if far_tier != "far":
            raise SystemExit(f"{label}: the body is {far_tier}, not far, from {FAR_POOLS[label]}")
        far_times = time_calls(far(body, FAR_POOLS[label]), n_ours)
        med, tc_med = statistics.median(ours), statistics.median(tc)
        far_med = statistics.median(far_times)
        sizes[label] = {"dualpool_us_median": round(med, 2), "dualpool_us_p99": round(p99(ours), 2),
                        "far_us_median": round(far_med, 2), "far_us_p99": round(p99(far_times), 2),
                        "token_counter_us_median": round(tc_med, 1),
                        "far_speedup_median": round(tc_med / far_med, 1)}
        details[label] = {"speedup_median": round(tc_med / med, 1),
                          "dualpool_ns_per_byte": round(1000 * med / size, 4),
                          "japanese_dualpool_us_median": round(statistics.median(ja), 2),
                          "japanese_dualpool_us_p99": round(p99(ja), 2),
                          "messages": len(body["messages"]), "calls": [n_ours, n_tc],
                          "many_short_messages": size // SHORT_MESSAGE_BYTES,
                          "many_short_messages_dualpool_us_median": round(
                              statistics.median(many), 2)}
        print(f"{label:>6} {med:>16.2f} {p99(ours):>10.2f} {tc_med:>21.1f} "
              f"{tc_med / med:>8.0f}x {statistics.median(ja):>10.2f} {far_med:>11.2f} "
              f"{tc_med / far_med:>11.0f}x")
    if args.breakdown:
        for label, size in SIZES.items():
            body = chat_body(english, size, MESSAGES[label])
            n = max(3, int(REPEATS[label][0] * args.repeat_scale))
            details[label]["far_breakdown"] = far_breakdown(estimator, body, FAR_POOLS[label],
                                                            settings, n)
            print(f"{label:>6} far path stages (median us): {details[label]['far_breakdown']}")
    result = {
        "sizes": sizes, "details": details,
        "targets": {"speedup_at_32KB": 100, "far_speedup_at_32KB": 100},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": sys.version.split()[0], "litellm": litellm.__version__
                    if hasattr(litellm, "__version__") else _litellm_version(),
                    "loadavg": [round(v, 2) for v in os.getloadavg()],
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
    }
    if args.json:
        print(json.dumps(result, separators=(",", ":")))
    return 0


def far_breakdown(estimator: Estimator, body: dict[str, Any], limits: tuple[int, int],
                  settings: PolicySettings, repeats: int) -> dict[str, float]:
    """Median microseconds of each stage of the far path, each timed alone."""
    from litellm_dualpool.core.shape import measure_request, utf8_len

    draft = measure_request(body)
    shape = draft.bytes_shape()
    key = CategoryKey("g", shape.content_class.value)
    pools = [PoolState("short", limits[0], 0.3), PoolState("long", limits[1], 0.1)]
    est = estimator.estimate(body, "g", limits=limits,
                             headroom_fraction=settings.headroom_fraction)
    non_ascii = [m["content"] for m in body["messages"] if not m["content"].isascii()]
    stages: dict[str, Callable[[], object]] = {
        "walk": lambda: measure_request(body),
        "utf8_encode": lambda: [utf8_len(t) for t in non_ascii],
        "bytes_shape": lambda: draft._build(None, shape.content_class),
        "far_range": lambda: estimator.calibrator.estimate_far(key, shape),
        "estimate": lambda: estimator.estimate(body, "g", limits=limits,
                                               headroom_fraction=settings.headroom_fraction),
        "decide": lambda: decide(est.budget.total_tokens, pools, settings,
                                 category=est.key.category),
    }
    out = {name: round(statistics.median(time_calls(fn, repeats)), 2)
           for name, fn in stages.items()}
    out["non_ascii_messages"] = len(non_ascii)
    return out


def _litellm_version() -> str:
    from importlib.metadata import version

    return version("litellm")


if __name__ == "__main__":
    raise SystemExit(main())
