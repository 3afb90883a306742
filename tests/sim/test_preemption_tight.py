"""The tight-KV preemption case behind the 5.4x target (bench/preemption_tight.py), run through
the real engine model and fleet simulator on the Mooncake trace: vLLM's default 1024 sequences
on one H100 with Llama-3.1-8B preempt in the homogeneous fleet, and the split removes most of it.
Half the bench's span, so the figures differ from docs/evaluation.md's."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import preemption_tight  # noqa: E402


def test_split_cuts_preemptions_of_vllm_default_flags_on_a_tight_cache() -> None:
    case = next(c for c in preemption_tight.CASES if c.key == "8b-h100-default")
    result = preemption_tight.run_case(replace(case, seconds=case.seconds / 2))
    homogeneous, dual = result["homogeneous"], result["dual"]
    # more sequences than the cache holds at P99 (the KV check says so), so the mix preempts
    assert result["kv"]["homogeneous"]["safe_max_num_seqs"] < 1024
    assert homogeneous["preemptions"] >= preemption_tight.MIN_EVENTS
    assert dual["preemptions"] < homogeneous["preemptions"]
    interval = result["reduction"]["dual"]
    assert (interval.baseline_events, interval.candidate_events) == (homogeneous["preemptions"], dual["preemptions"])
    assert interval.low is not None and interval.low > 1.0  # surely fewer, not by chance
    assert interval.low <= interval.ratio <= interval.high or math.isinf(interval.ratio)
    row = preemption_tight._factor_text(result, "dual")
    assert row.startswith("x") and "(" in row
