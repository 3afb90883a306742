"""The calibrator: convergence under noise, warm start, safety rules, keys, snapshot, threads."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from litellm_dualpool.config import CalibrationConfig
from litellm_dualpool.core.calibration import (
    CalibrationSettings,
    Calibrator,
    CategoryKey,
    _KeyState,
)
from litellm_dualpool.core.content import CharCounts
from litellm_dualpool.core.shape import ContentClass, RequestShape
from litellm_dualpool.errors import ConfigError

KEY = CategoryKey("llama", "prose")


def shape(text_bytes: int, messages: int = 1, **kw: object) -> RequestShape:
    base = RequestShape(text_bytes, 0, messages, 0, 0, 0, None, ContentClass.PROSE)
    return replace(base, **kw)  # type: ignore[arg-type]


def truth(text_bytes: int, messages: int, ratio: float, noise: float, rng: random.Random) -> int:
    """A template-like backend: text at `ratio` bytes/token (+-noise), 5/message, 4 fixed."""
    return round(text_bytes / ratio * (1 + rng.uniform(-noise, noise))) + 5 * messages + 4


@settings(max_examples=25, deadline=None)
@given(st.floats(2.0, 6.0), st.integers(0, 2**32 - 1))
def test_converges_under_noise(ratio: float, seed: int) -> None:
    rng = random.Random(seed)
    cal = Calibrator()
    for _ in range(150):
        b, m = rng.randint(200, 40_000), rng.randint(1, 12)
        cal.observe(KEY, shape(b, m), truth(b, m, ratio, 0.05, rng))
    for b in (2_000, 30_000):
        exact = b / ratio + 5 * 3 + 4
        point = cal.estimate_point_tokens(KEY, shape(b, 3))
        assert abs(point - exact) / exact < 0.03
        assert cal.estimate_prompt_tokens(KEY, shape(b, 3)) >= point
    assert abs(cal.ratio(KEY).bytes_per_token - ratio) / ratio < 0.05


def test_warm_start_is_useful_after_a_handful() -> None:
    rng = random.Random(1)
    cal = Calibrator()
    for _ in range(5):
        b = rng.randint(1_000, 20_000)
        cal.observe(KEY, shape(b), truth(b, 1, 3.0, 0.0, rng))
    exact = 10_000 / 3.0 + 9
    assert abs(cal.estimate_point_tokens(KEY, shape(10_000)) - exact) / exact < 0.05


def test_cold_start_uses_the_configured_ratio_conservatively() -> None:
    cal = Calibrator(CalibrationSettings(cold_start_bytes_per_token=4.0))
    point, cons = cal.estimate_both(KEY, shape(40_000))
    assert 10_000 <= point <= 10_020
    assert cons > point


def test_tiny_prompts_do_not_skew_the_ratio() -> None:
    rng = random.Random(2)
    cal = Calibrator()
    for _ in range(200):  # mostly tiny prompts dominated by framing
        b = rng.randint(10, 200) if rng.random() < 0.8 else rng.randint(5_000, 20_000)
        cal.observe(KEY, shape(b), truth(b, 1, 4.5, 0.02, rng))
    assert abs(cal.ratio(KEY).bytes_per_token - 4.5) < 0.2


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(1, 50))
def test_estimate_is_monotonic_in_bytes(a: int, b: int, messages: int) -> None:
    rng = random.Random(0)
    cal = Calibrator()
    for _ in range(20):
        n = rng.randint(100, 5000)
        cal.observe(KEY, shape(n), truth(n, 1, 3.7, 0.05, rng))
    lo, hi = sorted((a, b))
    for fn in (cal.estimate_prompt_tokens, cal.estimate_point_tokens):
        assert fn(KEY, shape(lo, messages)) <= fn(KEY, shape(hi, messages))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2000), st.integers(0, 20_000))
def test_a_whole_indentation_run_never_lowers_the_estimate(seed: int, runs: int,
                                                           spaces: int) -> None:
    """Runs may cost far less than their four spaces (one token for the lot), never less
    than nothing: appending a 4-space run (4 bytes, 4 spaces, 1 run) keeps the estimate."""
    rng = random.Random(seed)
    cal = Calibrator()
    code = CategoryKey("llama", "code")
    for _ in range(80):  # adversarial: each run lowers the count (no tokenizer does); clamped
        b, r = rng.randint(500, 30_000), rng.randint(0, 400)
        s = b // 6 + 4 * r
        counts = CharCounts(s, b // 40, b // 50, b // 12, b // 40, 0, r)
        tokens = round(b / 3.2 + s * 0.1 - 3.0 * r * rng.uniform(0.9, 1.1)) + 9
        cal.observe(code, shape(b + 4 * r, char_counts=counts), max(tokens, 1))
    bytes_ = 5000 + 4 * runs + spaces
    before = shape(bytes_, char_counts=CharCounts(spaces + 4 * runs, 10, 10, 100, 50, 0, runs))
    after = shape(bytes_ + 4, char_counts=CharCounts(spaces + 4 * runs + 4, 10, 10, 100, 50, 0,
                                                      runs + 1))
    for fn in (cal.estimate_prompt_tokens, cal.estimate_point_tokens):
        assert fn(code, after) >= fn(code, before)


def test_media_and_token_ids_are_not_learned() -> None:
    cal = Calibrator()
    assert not cal.observe(KEY, shape(1000, image_count=1), 2000)
    assert not cal.observe(KEY, shape(0, exact_prompt_tokens=50), 50)
    assert not cal.observe(KEY, shape(1000), 0)
    assert cal.ratio(KEY).samples == 0
    est = cal.estimate_prompt_tokens(KEY, shape(0, image_count=2, exact_prompt_tokens=7))
    assert est == 2 * CalibrationSettings().image_tokens + 7


def test_outliers_are_rejected_and_a_regime_change_is_followed() -> None:
    rng = random.Random(3)
    cal = Calibrator()
    for _ in range(30):
        b = rng.randint(2000, 8000)
        cal.observe(KEY, shape(b), truth(b, 1, 4.0, 0.02, rng))
    before = cal.ratio(KEY).bytes_per_token
    assert not cal.observe(KEY, shape(4000), 3000)  # 1.3 bytes/token: an outlier
    assert not cal.observe(KEY, shape(4000), 40_000)  # below min bytes/token
    assert cal.ratio(KEY).bytes_per_token == before
    for _ in range(80):  # the backend really changed: 2.5 bytes/token from now on
        b = rng.randint(2000, 8000)
        cal.observe(KEY, shape(b), truth(b, 1, 2.5, 0.02, rng))
    assert abs(cal.ratio(KEY).bytes_per_token - 2.5) < 0.15


def test_one_observation_moves_the_estimate_boundedly() -> None:
    s = CalibrationSettings()
    cal = Calibrator(s)
    before = cal.estimate_point_tokens(KEY, shape(4000))
    cal.observe(KEY, shape(4000), 3900)  # ~1.03 bytes/token, inside the bounds
    after = cal.estimate_point_tokens(KEY, shape(4000))
    assert after <= before * (1 + s.max_step_fraction) + 1


def test_keys_are_bounded() -> None:
    cal = Calibrator(CalibrationSettings(max_keys=4))
    learned = [cal.observe(CategoryKey("g", f"tenant-{i}"), shape(1000), 250) for i in range(50)]
    assert all(learned)  # every observation is kept somewhere, none vanishes
    keys = cal.keys()
    assert len(keys) <= 5
    # the first four callers have keys of their own; everyone after them shares a fallback key
    assert {CategoryKey("g", f"tenant-{i}") for i in range(4)} <= set(keys)
    assert sum(cal.ratio(k).samples for k in keys) == 50


def test_a_new_caller_category_borrows_the_content_class_state() -> None:
    cal = Calibrator()
    for _ in range(20):
        cal.observe(CategoryKey("g", "prose"), shape(10_000), 10_000 // 2 + 9)
    borrowed = cal.estimate_point_tokens(CategoryKey("g", "tenant-x"), shape(10_000))
    assert borrowed == cal.estimate_point_tokens(CategoryKey("g", "prose"), shape(10_000))
    assert borrowed != Calibrator().estimate_point_tokens(CategoryKey("g", "prose"), shape(10_000))


def test_snapshot_round_trip() -> None:
    rng = random.Random(4)
    cal = Calibrator()
    for i in range(60):
        key = CategoryKey("g", ["prose", "code", "cjk"][i % 3])
        b = rng.randint(500, 9000)
        cal.observe(key, shape(b, rng.randint(1, 5)), truth(b, 2, 3.5, 0.05, rng))
    snap = json.loads(json.dumps(cal.snapshot()))
    assert snap["version"] == 3
    assert len(json.dumps(snap)) < 3 * 2500  # three keys
    other = Calibrator()
    other.restore(snap)
    learned = cal.keys()
    assert other.keys() == learned
    for key in learned:
        assert other.ratio(key) == cal.ratio(key)
        assert other.estimate_both(key, shape(7777, 3)) == cal.estimate_both(key, shape(7777, 3))
    # and it keeps learning identically
    for c in (cal, other):
        c.observe(CategoryKey("g", "prose"), shape(5000), 1300)
    assert other.snapshot() == cal.snapshot()


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda s: s.update(version=99), "snapshot.version"),
    (lambda s: s.update(keys={}), "snapshot.keys"),
    (lambda s: s["keys"][0].update(theta=[1, 2]), "snapshot.keys[0].theta"),
    (lambda s: s["keys"][0].update(samples=-1), "snapshot.keys[0].samples"),
    (lambda s: s["keys"][0].update(dev_sum="x"), "snapshot.keys[0].dev_sum"),
    (lambda s: s["keys"][0]["a_upper"].__setitem__(2, float("inf")),
     "snapshot.keys[0].a_upper[2]"),
    (lambda s: s["keys"][0].update(a_upper=[0.0] * 5), "snapshot.keys[0].a_upper"),
    (lambda s: s["keys"][0].update(densities=None), "snapshot.keys[0].densities"),
])
def test_restore_rejects_bad_snapshots(mutate, path: str) -> None:  # type: ignore[no-untyped-def]
    cal = Calibrator()
    cal.observe(KEY, shape(1000), 260)
    snap = json.loads(json.dumps(cal.snapshot()))
    mutate(snap)
    with pytest.raises(ConfigError) as info:
        Calibrator().restore(snap)
    assert info.value.path == path


def test_restore_refuses_more_keys_than_allowed() -> None:
    big = Calibrator(CalibrationSettings(max_keys=8))
    for i in range(8):
        big.observe(CategoryKey("g", f"c{i}"), shape(1000), 260)
    with pytest.raises(ConfigError) as info:
        Calibrator(CalibrationSettings(max_keys=4)).restore(big.snapshot())
    assert info.value.path == "snapshot.keys"


@pytest.mark.parametrize(("kwargs", "path"), [
    ({"ema_beta": 1.0}, "ema_beta"), ({"gamma": -1}, "gamma"), ({"max_keys": 0}, "max_keys"),
    ({"min_bytes_per_token": 5, "max_bytes_per_token": 4}, "min_bytes_per_token"),
    ({"cold_start_bytes_per_token": 20}, "cold_start_bytes_per_token")])
def test_bad_settings_are_refused_by_the_one_definition_of_their_bounds(
        kwargs: dict[str, float], path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CalibrationConfig(**kwargs)
    assert path in str(caught.value)


def test_internal_knobs_are_checked_in_the_core() -> None:
    with pytest.raises(ConfigError) as caught:
        CalibrationSettings(outlier_factor=0)
    assert caught.value.path == "outlier_factor"
    assert CalibrationConfig().to_core() == CalibrationSettings()


def test_thread_safety_smoke() -> None:
    cal = Calibrator()
    errors: list[BaseException] = []
    accepted = [0] * 8

    def worker(i: int) -> None:
        rng = random.Random(i)
        try:
            for _ in range(300):
                key = CategoryKey("g", ["prose", "code"][i % 2])
                b = rng.randint(100, 5000)
                accepted[i] += cal.observe(key, shape(b), truth(b, 1, 4.0, 0.03, rng))
                cal.estimate_both(key, shape(b))
                cal.snapshot()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    learned = cal.keys()
    total = sum(cal.ratio(k).samples for k in learned)
    assert total == sum(accepted)
    assert abs(cal.ratio(CategoryKey("g", "prose")).bytes_per_token - 4.0) < 0.3


WORDS = ["the", "tokenizer", "def", "f(x):", "    return", "x", "{", "}", "42", "3.14", "Hello",
         "日本語", "です。", "café", "\n", "\n    ", "    ", "JSON", '"key":', "!", "ü"]


def trained() -> Calibrator:
    from litellm_dualpool.core.shape import shape_request

    rng = random.Random(9)
    cal = Calibrator()
    for _ in range(80):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 400)))
        s = shape_request({"messages": [{"role": "user", "content": text}]})
        cal.observe(KEY, s, max(1, round(s.total_bytes / rng.uniform(2.5, 5.0))) + 9)
    return cal


TRAINED = trained()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=200), st.lists(st.sampled_from(WORDS), min_size=1,
                                                                 max_size=200))
def test_appending_text_never_lowers_the_estimate(head: list[str], tail: list[str]) -> None:
    """Within the sample budget (4096 characters) the counts are exact and every character
    class costs >= 0 tokens, so appending text never lowers the estimate of a key."""
    from litellm_dualpool.core.shape import shape_request

    a = "".join(head)
    b = a + "".join(tail)
    sa = shape_request({"messages": [{"role": "user", "content": a}]})
    sb = shape_request({"messages": [{"role": "user", "content": b}]})
    for fn in (TRAINED.estimate_point_tokens, TRAINED.estimate_prompt_tokens):
        assert fn(KEY, sa) <= fn(KEY, sb)


def _eager_statistics(observations: list[tuple[list[float], float, float]],
                      beta: float) -> tuple[list[list[float]], list[float]]:
    """The textbook update, A <- beta*A + w*x*x', b <- beta*b + w*x*y, entry by entry."""
    n = len(observations[0][0])
    a, b = [[0.0] * n for _ in range(n)], [0.0] * n
    for x, y, w in observations:
        a = [[beta * a[i][j] + w * x[i] * x[j] for j in range(n)] for i in range(n)]
        b = [beta * b[i] + w * x[i] * y for i in range(n)]
    return a, b


def test_lazily_decayed_statistics_equal_the_textbook_update() -> None:
    """The key state decays a scale factor and adds only non-zero products; over 3000
    observations (the scale is folded in along the way) it equals the plain update."""
    rng = random.Random(11)
    state = _KeyState(CalibrationSettings())
    observations = []
    for _ in range(3000):
        x = [rng.choice([0.0, rng.uniform(0, 9)]) for _ in range(13)]
        y, w = rng.uniform(10, 5000), rng.uniform(1e-8, 1e-3)
        observations.append((x, y, w))
        state.add(x, y, w, 0.9)  # a short window: the scale passes 1e-100 every ~2200 adds
    a, b = state.stats()
    want_a, want_b = _eager_statistics(observations, 0.9)
    assert all(v == pytest.approx(w, rel=1e-9, abs=1e-300)
               for row, want_row in zip(a, want_a, strict=True)
               for v, w in zip(row, want_row, strict=True))
    assert b == pytest.approx(want_b, rel=1e-9)
    assert a == [list(col) for col in zip(*a, strict=True)]  # symmetric


def test_version_2_snapshots_restore_to_the_same_model() -> None:
    """A snapshot written before the statistics were kept scaled (version 2: decayed values,
    no "scale") restores to the same estimates and keeps learning the same way."""
    rng = random.Random(5)
    cal = Calibrator()
    for _ in range(40):
        b = rng.randint(500, 9000)
        cal.observe(CategoryKey("g", "prose"), shape(b, 2), truth(b, 2, 3.7, 0.05, rng))
    snap = json.loads(json.dumps(cal.snapshot()))
    entry = snap["keys"][0]
    scale = entry.pop("scale")
    assert scale < 1.0
    entry["a_upper"] = [scale * v for v in entry["a_upper"]]
    entry["b"] = [scale * v for v in entry["b"]]
    snap["version"] = 2
    old = Calibrator()
    old.restore(snap)
    key = CategoryKey("g", "prose")
    assert old.estimate_both(key, shape(7777, 3)) == cal.estimate_both(key, shape(7777, 3))
    for c in (cal, old):
        for i in range(8):
            c.observe(key, shape(3000 + 500 * i, 2), 800 + 130 * i)
    assert old.ratio(key).bytes_per_token == pytest.approx(cal.ratio(key).bytes_per_token,
                                                           rel=1e-9)


def test_a_regime_change_on_a_long_lived_key_is_followed_at_once() -> None:
    """Past 256 samples the fit is re-solved only every 16th observation, but a regime change
    (a new tokenizer behind the same model name) makes the next ones refit every time."""
    rng = random.Random(9)
    cal = Calibrator()
    for _ in range(600):
        b = rng.randint(800, 6000)
        cal.observe(KEY, shape(b, 2), truth(b, 2, 4.2, 0.02, rng))
    assert cal.ratio(KEY).bytes_per_token == pytest.approx(4.2, rel=0.03)
    errors = []
    for _ in range(60):  # the backend now counts ~2x the tokens
        b = rng.randint(800, 6000)
        y = truth(b, 2, 2.1, 0.02, rng)
        errors.append(abs(cal.estimate_point_tokens(KEY, shape(b, 2)) - y) / y)
        cal.observe(KEY, shape(b, 2), y)
    # outlier streaks let one observation in at a time, each clipped to 25% of the prediction,
    # so it takes a few dozen; with a refit every 4th observation it took ~60 (0.04-0.22 here)
    assert max(errors[:5]) > 0.4
    assert max(errors[-10:]) < 0.05
