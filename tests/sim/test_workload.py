"""Trace readers, time scaling and the bytes synthesised for the estimator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from litellm_dualpool.errors import ConfigError
from litellm_dualpool.planner.model import LengthMix
from litellm_dualpool.sim.workload import (
    FRAMING_TOKENS_PER_MESSAGE,
    FRAMING_TOKENS_PER_REQUEST,
    Workload,
    arrival_dispersion,
    from_cdf,
    read_trace,
    synthesize_shapes,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_azure_csv(tmp_path: Path) -> None:
    path = tmp_path / "AzureLLMInferenceTrace_code.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                    "2023-11-16 18:17:03.9799600,4808,10\n"
                    "2023-11-16 18:17:04.0319600,3180,8\n"
                    "2023-11-16 18:17:05.4799600,110,27\n")
    w = read_trace(path)
    assert w.categories == ("code",)
    assert w.prompt_tokens.tolist() == [4808, 3180, 110]
    assert w.output_tokens.tolist() == [10, 8, 27]
    assert w.arrival_seconds.tolist() == pytest.approx([0.0, 0.052, 1.5])


def test_mooncake_jsonl_timestamps_are_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "conversation_trace.jsonl"
    rows = [{"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0]},
            {"timestamp": 2500, "input_length": 100, "output_length": 3, "hash_ids": [1]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = read_trace(path)
    assert w.arrival_seconds.tolist() == [0.0, 2.5]
    assert w.categories == ("prose",) and w.total_tokens.tolist() == [7258, 103]


def test_generic_trace_and_missing_columns(tmp_path: Path) -> None:
    ok = tmp_path / "mine.csv"
    ok.write_text("arrival_time,prompt_tokens,completion_tokens\n3.0,10,5\n1.0,20,6\n")
    w = read_trace(ok)
    assert w.prompt_tokens.tolist() == [20, 10]  # sorted by time
    bad = tmp_path / "bad.csv"
    bad.write_text("when,prompt_tokens,completion_tokens\n1,2,3\n")
    with pytest.raises(ConfigError, match="no timestamp column"):
        read_trace(bad)


def test_scaling_and_resizing_keep_the_shape() -> None:
    w = from_cdf([[1000, 0.5], [8000, 1.0]], 1000, 5.0, seed=1)
    fast = w.scaled_to_rate(500.0)
    assert fast.rate_per_second == pytest.approx(500.0)
    factor = w.rate_per_second / 500.0
    assert np.allclose(np.diff(fast.arrival_seconds), np.diff(w.arrival_seconds) * factor)
    big = w.resized(2500)
    assert len(big) == 2500 and (np.diff(big.arrival_seconds) >= 0).all()
    assert big.prompt_tokens[1000:2000].tolist() == w.prompt_tokens.tolist()
    assert 0.45 < float((w.total_tokens <= 1000).mean()) < 0.55


def test_shapes_carry_bytes_not_token_counts() -> None:
    w = from_cdf([[2000, 1.0]], 4000, 10.0, seed=2)
    shapes = synthesize_shapes(w, seed=3)
    framing = np.array([FRAMING_TOKENS_PER_REQUEST + FRAMING_TOKENS_PER_MESSAGE * s.message_count
                        for s in shapes])
    text_tokens = np.maximum(w.prompt_tokens - framing, 1)
    ratios = np.array([s.text_bytes for s in shapes]) / text_tokens
    big = text_tokens > 200
    assert 4.5 < ratios[big].mean() < 4.7  # prose ~4.6 bytes/token with Llama-3
    assert 0.06 < ratios[big].std() / ratios[big].mean() < 0.10  # ~8% per-request noise


@pytest.mark.parametrize("name", ["azure2023/AzureLLMInferenceTrace_conv.csv",
                                  "mooncake/conversation_trace.jsonl"])
def test_the_shipped_traces_read(name: str) -> None:
    path = DATA / "traces" / name
    if not path.exists():
        pytest.fail(f"shared trace missing: {path}")
    w = read_trace(path)
    assert len(w) > 10000 and w.duration_seconds > 3000


def _modulated(seconds: float = 4000.0, seed: int = 0) -> Workload:
    """Poisson arrivals whose rate switches between 1/s and 9/s after exponential spells of 20 s
    on average (mean 5/s): within a second Poisson-like, over minutes a swing, like real traffic."""
    rng = np.random.default_rng(seed)
    times, start, high = [], 0.0, False
    while start < seconds:
        spell = rng.exponential(20.0)
        rate = 9.0 if high else 1.0
        times.append(start + np.sort(rng.uniform(0, spell, rng.poisson(rate * spell))))
        start, high = start + spell, not high
    t = np.concatenate(times)
    n = len(t)
    return Workload("modulated", t - t[0], rng.integers(100, 9000, n), rng.integers(10, 300, n),
                    np.zeros(n, dtype=np.int32), ("prose",))


def test_superposed_copies_keep_the_traces_burstiness_where_compression_magnifies_it() -> None:
    """Per 1 s: rate 1 or 9 gives a dispersion of about 1 + 16/5 = 4.2 in the trace. Twenty
    independent shifted copies (100 req/s) keep it; compressing time 20x puts a whole spell of the
    swing into each second, and the dispersion grows with the compression (about 34 here)."""
    trace = _modulated()
    own = arrival_dispersion(trace.arrival_seconds)
    assert 3.0 < own < 5.5
    sup = trace.superposed(100.0, seconds=600.0, seed=1)
    comp = trace.scaled_to_rate(100.0)
    assert len(sup) / 600.0 == pytest.approx(100.0, rel=0.05)
    assert arrival_dispersion(sup.arrival_seconds) == pytest.approx(own, rel=0.3)
    assert arrival_dispersion(comp.arrival_seconds) > 30.0
    # lengths are the trace's own, drawn evenly from every part of it
    assert np.isin(sup.prompt_tokens, trace.prompt_tokens).all()
    assert sup.prompt_tokens.mean() == pytest.approx(trace.prompt_tokens.mean(), rel=0.05)
    # the planner's analytic view of the same superposition: the copy's dispersion, thinned
    mix = LengthMix.from_trace(trace, 100.0)
    keep = mix.superposed_keep_fraction
    assert keep is not None and 0.9 < keep <= 1.0  # 100 req/s is just over 20 copies' worth
    assert mix.arrival_dispersion() == pytest.approx(1 + keep * (own - 1))
    assert LengthMix.from_trace(trace, 100.0, "compress").arrival_dispersion() > 30.0


def test_thinning_pulls_the_dispersion_toward_poisson() -> None:
    """A rate that needs 1.5 copies' worth: two copies each kept with p = 0.75 -> 1 + 0.75 (D - 1)."""
    trace = _modulated()
    own_rate = len(trace) / trace.period_seconds
    mix = LengthMix.from_trace(trace, 1.5 * own_rate)
    assert mix.superposed_keep_fraction == pytest.approx(0.75)
    own = arrival_dispersion(trace.arrival_seconds)
    assert mix.arrival_dispersion() == pytest.approx(1 + 0.75 * (own - 1))
    sup = trace.superposed(1.5 * own_rate, seed=2)
    assert len(sup) == pytest.approx(1.5 * len(trace), rel=0.05)
    with pytest.raises(ConfigError):
        trace.superposed(0.0)
    with pytest.raises(ConfigError):
        LengthMix.from_trace(trace, 10.0, "stretch")
