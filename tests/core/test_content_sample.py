"""The bounded character sample: exact up to SAMPLE_CHARS, then a systematic sample of single
characters plus slices for sequences, extrapolated to the whole text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_dualpool.core import content
from litellm_dualpool.core.shape import shape_request

PROMPTS = Path(__file__).resolve().parents[3] / "shared" / "data" / "prompts"


def _english() -> list[str]:
    path = PROMPTS / "mt_bench_question.jsonl"
    if not path.exists():  # pragma: no cover - the shared data is part of the checkout layout
        pytest.fail(f"shared prompt data missing: {path}")
    with path.open(encoding="utf-8") as fh:
        return [t for line in fh for t in json.loads(line)["turns"]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=12), st.integers(1, 300))
def test_sample_takes_every_kth_character_of_the_concatenation(strings: list[str],
                                                                budget: int) -> None:
    joined = "".join(strings)
    got = content.sample(strings, len(joined), budget)
    if len(joined) <= budget:
        assert got == joined
    else:
        stride = -(-len(joined) // budget)
        assert got == joined[stride // 2 :: stride]
        assert len(got) <= budget


def test_small_text_is_counted_exactly() -> None:
    strings = ["Hello World 42,", "\n    indented: yes", "日本語のテキスト"]
    total = sum(map(len, strings))
    assert content.measure_strings(strings, total) == content.measure("".join(strings))


def test_large_text_counts_extrapolate_within_a_few_percent() -> None:
    """200K characters of real English in 40 messages: every single-character count from the
    8K-character strided sample lands within 4 binomial standard deviations of the exact count
    (a sampler that favoured or skipped some positions, e.g. message starts, would not)."""
    turns = _english()
    rng = random.Random(3)
    strings = ["\n\n".join(rng.choice(turns) for _ in range(60)) for _ in range(40)]
    total = sum(map(len, strings))
    assert total > 20 * content.SAMPLE_CHARS
    exact = content.measure("".join(strings))
    stats = content.measure_strings(strings, total)
    f = total / stats.chars
    for name in ("spaces", "punctuation", "uppercase", "newlines"):
        want, got = getattr(exact, name), getattr(stats, name) * f
        p = want / total
        sd = (stats.chars * p * (1 - p)) ** 0.5 * f
        assert abs(got - want) <= 4 * sd, (name, got, want, sd)
    assert stats.first == exact.first


def test_first_character_is_the_texts_not_a_slices() -> None:
    """JSON pasted as text is recognised by its first non-blank character, which must come from
    the start of the strings, not from wherever a sampled slice begins."""
    rows = [{"id": i, "name": f"item {i}", "tags": ["a", "b"], "ok": True} for i in range(3000)]
    body = {"messages": [{"role": "user", "content": "  \n" + json.dumps(rows)}]}
    shape = shape_request(body)
    assert len(body["messages"][0]["content"]) > content.SAMPLE_CHARS
    assert shape.content_class.value == "structured"


def test_four_space_runs_are_exact_up_to_the_bound_and_sampled_beyond() -> None:
    # Indented code, longer than the character sample: the runs are not sampled but counted.
    lines = [("    " * (i % 4)) + f"value_{i} = compute({i}, other)\n" for i in range(900)]
    strings = ["".join(lines[:450]), "".join(lines[450:])]
    total = sum(map(len, strings))
    assert total > content.SAMPLE_CHARS
    exact = sum(i % 4 for i in range(900))  # line i is indented by i % 4 runs
    counts = content.measure_strings(strings, total).scaled(total, 0)
    assert counts.space_runs == exact
    # Above the bound the slices estimate them (close, not exact).
    sampled = content.measure_strings(strings, total, exact_run_chars=total - 1)
    assert sampled.exact_space_runs is None
    assert sampled.scaled(total, 0).space_runs == pytest.approx(exact, rel=0.25)
