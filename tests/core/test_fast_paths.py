"""Fast paths that must compute exactly what the plain algorithm computes: the sample's character
counts (one class translation instead of one deleting translation per class) and the decoupled
Cholesky solve (unknowns whose row is zero off the diagonal solved on their own)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_dualpool.core import content
from litellm_dualpool.core.linalg import cholesky_solve, solve_spd

#: Pieces that hit every class: ASCII letters, capitals, digits, code marks, other punctuation,
#: whitespace and indentation, JSON pairs, 2/3/4-byte characters, kana (0xE3 lead), CJK, hangul,
#: a lone surrogate.
_PIECES = ["a", "Z", "7", "{", "_", "!", ",", " ", "\n", "    ", "\n    ", '":', "é", "ß", "—",
           "か", "日", "한", "😀", "\ud800", "\t"]


def _oracle(text: str) -> dict[str, object]:
    """The counts by a byte-by-byte loop (independent of bytes.translate/count)."""
    raw = text.encode("utf-8", "surrogatepass")
    multibyte = len(raw) != len(text)

    def count(members: bytes) -> int:
        return sum(1 for b in raw if b in members)

    def runs(pattern: bytes) -> int:  # non-overlapping, like bytes.count
        found, i = 0, raw.find(pattern)
        while i >= 0:
            found += 1
            i = raw.find(pattern, i + len(pattern))
        return found

    first = text.lstrip()[:1]
    return {"chars": len(text), "spaces": count(b" "), "newlines": count(b"\n"),
            "digits": count(content._DIGITS), "punctuation": count(content._PUNCT),
            "uppercase": count(content._UPPER), "code_marks": count(content._CODE_MARKS),
            "indents": runs(b"\n    "), "space_runs": runs(b"    "),
            "kana": count(b"\xe3") if multibyte else 0,
            "cjk": count(content._CJK_LEADS) if multibyte else 0,
            "json_pairs": runs(b'":') if first in ("{", "[") else 0, "first": first}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=80).map("".join))
def test_measure_counts_every_class_exactly(text: str) -> None:
    stats = content.measure(text)
    assert {name: getattr(stats, name) for name in _oracle(text)} == _oracle(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_measure_on_arbitrary_text(text: str) -> None:
    stats = content.measure(text)
    assert {name: getattr(stats, name) for name in _oracle(text)} == _oracle(text)


def _spd(rng: random.Random, n: int, zero: set[int]) -> tuple[list[list[float]], list[float]]:
    """A symmetric positive definite system (a weighted Gram matrix plus a ridge, like the
    calibrator's) whose rows and columns in `zero` are zero off the diagonal."""
    rows = [[0.0 if j in zero else rng.uniform(-3, 3) * 10 ** rng.randint(-3, 3)
             for j in range(n)] for _ in range(n + 3)]
    matrix = [[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)]
    for i in range(n):
        matrix[i][i] += 10 ** rng.uniform(-8, -1)
    return matrix, [rng.uniform(-5, 5) for _ in range(n)]


def test_decoupled_solve_equals_full_cholesky() -> None:
    rng = random.Random(7)
    decoupled_cases = 0
    for trial in range(400):
        n = rng.randint(1, 13)
        zero = {i for i in range(n) if rng.random() < 0.3}
        decoupled_cases += bool(zero)
        matrix, rhs = _spd(rng, n, zero)
        full = cholesky_solve(matrix, rhs)
        assert full is not None
        assert solve_spd(matrix, rhs) == full, (trial, n, sorted(zero))
    assert decoupled_cases > 100


def test_decoupled_solve_refuses_what_cholesky_refuses() -> None:
    rng = random.Random(11)
    for n in range(2, 8):
        for bad in range(n):
            matrix, rhs = _spd(rng, n, {bad})
            matrix[bad][bad] = 0.0  # a decoupled unknown with no curvature: not positive definite
            assert cholesky_solve(matrix, rhs) is None
            assert solve_spd(matrix, rhs) is None
        matrix, rhs = _spd(rng, n, {0})
        matrix[n - 1][n - 1] = -1.0  # a coupled unknown breaks the factorisation
        assert cholesky_solve(matrix, rhs) is None
        assert solve_spd(matrix, rhs) is None


def test_all_decoupled_is_the_diagonal_solve() -> None:
    matrix = [[4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5]]
    assert solve_spd(matrix, [8.0, -1.0, 3.0]) == cholesky_solve(matrix, [8.0, -1.0, 3.0])
    # (rhs / s) / s as Cholesky computes it, which is not always rhs / diagonal to the last bit
    assert solve_spd(matrix, [8.0, -1.0, 3.0]) == pytest.approx([2.0, -0.5, 6.0], rel=1e-15)


def test_bytes_per_token_is_the_ratio_views() -> None:
    from litellm_dualpool.core.calibration import Calibrator, CategoryKey
    from litellm_dualpool.core.shape import shape_request

    cal = Calibrator()
    cold, warm = CategoryKey("g", "cold"), CategoryKey("g", "prose")
    assert cal.bytes_per_token(cold) == cal.ratio(cold).bytes_per_token
    rng = random.Random(3)
    for _ in range(150):  # past the every-observation refits, with a changing character mix
        text = " ".join(rng.choice(["alpha", "Beta", "42", "x=1;", "\n    y"])
                        for _ in range(rng.randint(20, 400)))
        shape = shape_request({"messages": [{"role": "user", "content": text}]})
        cal.observe(warm, shape, max(1, round(len(text) / rng.uniform(3.5, 4.5))))
        assert cal.bytes_per_token(warm) == cal.ratio(warm).bytes_per_token
    assert cal.ratio(warm).samples > 64


_LIMIT_VALUES = st.one_of(st.none(), st.integers(-3, 10**6), st.booleans(), st.floats(0, 10),
                          st.just("12"))


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "max_completion_tokens": _LIMIT_VALUES, "max_tokens": _LIMIT_VALUES,
    "max_output_tokens": _LIMIT_VALUES, "n": _LIMIT_VALUES, "best_of": _LIMIT_VALUES}),
       st.integers(0, 4096), st.booleans())
def test_output_budget_and_sequences_fast_paths_agree_with_the_checks(
        body: dict[str, object], default: int, embedding: bool) -> None:
    """The one-field fast path of `output_budget_tokens` and the no-`n` one of `sequence_count`
    give what the field-by-field checks give, errors included."""
    from litellm_dualpool.core import budget
    from litellm_dualpool.errors import InvalidRequestError

    def checked() -> tuple[int, int]:  # the plain algorithm, field by field
        found = None
        for field in budget.OUTPUT_LIMIT_FIELDS:
            value = budget._non_negative_int(body, field, 0)
            if found is None and value is not None:
                found = value
        output = 0 if embedding else (default if found is None else found)
        n = budget._non_negative_int(body, "n", 1) or 1
        best_of = budget._non_negative_int(body, "best_of", 1) or 1
        return output, max(n, best_of)

    try:
        expected: object = checked()
    except InvalidRequestError as error:
        expected = type(error)
    try:
        got: object = (budget.output_budget_tokens(body, default, embedding=embedding),
                       budget.sequence_count(body))
    except InvalidRequestError as error:
        got = type(error)
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "short", "long"]),
                          st.one_of(st.integers(-2, 10), st.booleans(), st.just(4.0))),
                min_size=2, max_size=2))
def test_two_pool_sort_fast_path_agrees_with_the_checked_sort(pairs: list[tuple[str, object]]
                                                               ) -> None:
    """`sort_pools` on two pools orders and refuses exactly as the general loop does."""
    from litellm_dualpool.core.policy import PoolState, sort_pools
    from litellm_dualpool.errors import ConfigError

    pools = [PoolState(name, limit) for name, limit in pairs]  # type: ignore[arg-type]
    valid = (all(type(p.max_model_len) is int and p.max_model_len > 0 for p in pools)
             and pools[0].name != pools[1].name)
    if not valid:
        with pytest.raises(ConfigError):
            sort_pools(pools)
        return
    assert sort_pools(pools) == sorted(pools, key=lambda p: (p.max_model_len, p.name))
