"""A few lines of dense linear algebra for the calibrator's small (13x13) systems, in pure Python
so that the core needs no numpy."""

from __future__ import annotations

import math
from collections.abc import Sequence


def solve(matrix: Sequence[Sequence[float]], rhs: Sequence[float]) -> list[float] | None:
    """Solve `matrix @ x = rhs` by Gaussian elimination with partial pivoting.

    Returns None when the matrix is (numerically) singular; callers keep their previous answer.
    """
    n = len(rhs)
    a = [[*map(float, row), float(rhs[i])] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-300:
            return None
        if pivot != col:
            a[col], a[pivot] = a[pivot], a[col]
        inv = 1.0 / a[col][col]
        for r in range(col + 1, n):
            factor = a[r][col] * inv
            if factor:
                row_r, row_c = a[r], a[col]
                for c in range(col, n + 1):
                    row_r[c] -= factor * row_c[c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        acc = a[r][n] - sum(a[r][c] * x[c] for c in range(r + 1, n))
        x[r] = acc / a[r][r]
    return x


def solve_spd(matrix: Sequence[Sequence[float]], rhs: Sequence[float]) -> list[float] | None:
    """Solve `matrix @ x = rhs` for a symmetric positive definite matrix of finite values.

    Returns None when the matrix is not (numerically) positive definite.

    An unknown whose row is zero off the diagonal (so is its column: the matrix is symmetric) is
    decoupled: Cholesky would compute it as `(rhs / s) / s` with `s = sqrt(diagonal)` and add
    only exact zeros to every other unknown. It is solved that way, and the rest by Cholesky on
    the smaller system: the same values (`==`) as `cholesky_solve` on the whole system, at a
    fraction of its O(n^3) cost (the calibrator's statistics have such rows for features a key
    never sees: tools, kana).
    """
    n = len(rhs)
    coupled = [i for i, row in enumerate(matrix) if row.count(0.0) - (row[i] == 0.0) != n - 1]
    if len(coupled) == n:
        return cholesky_solve(matrix, rhs)
    x = [0.0] * n
    for i in range(n):
        diag = matrix[i][i]
        if i not in coupled:
            if not diag > 0.0:
                return None
            s = math.sqrt(diag)
            x[i] = (rhs[i] / s) / s
    if coupled:
        inner = cholesky_solve([[matrix[i][j] for j in coupled] for i in coupled],
                               [rhs[i] for i in coupled])
        if inner is None:
            return None
        for i, value in zip(coupled, inner, strict=True):
            x[i] = value
    return x


def cholesky_solve(matrix: Sequence[Sequence[float]], rhs: Sequence[float]) -> list[float] | None:
    """`solve_spd` without the decoupling: Cholesky on the whole system (None if not positive
    definite)."""
    n = len(rhs)
    low: list[list[float]] = []
    for i in range(n):
        row_i = matrix[i]
        li: list[float] = []
        for j in range(i):
            lj = low[j]
            acc = row_i[j]
            for k in range(j):
                acc -= li[k] * lj[k]
            li.append(acc / lj[j])
        diag = row_i[i] - sum(v * v for v in li)
        if not diag > 0.0:
            return None
        li.append(math.sqrt(diag))
        low.append(li)
    y: list[float] = []
    for i in range(n):
        li = low[i]
        y.append((rhs[i] - sum(li[k] * y[k] for k in range(i))) / li[i])
    x = [0.0] * n
    for i in range(n - 1, -1, -1):
        acc = y[i]
        for k in range(i + 1, n):
            acc -= low[k][i] * x[k]
        x[i] = acc / low[i][i]
    return x
