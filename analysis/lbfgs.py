"""L-BFGS over a batch of independent small problems, in numpy.

The Chinchilla fit starts L-BFGS from 4,500 grid points. Each problem has five parameters,
so a per-start scipy loop spends most of its time in Python overhead. Here every start
keeps its own curvature history and its own line search, but each step evaluates the
objective for all active starts in one vectorised call. Starts leave the batch as they
converge, so late iterations are cheap. The arithmetic is the same for every run of the
same input, so the result is deterministic.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class BatchResult:
    x: np.ndarray  # (S, n) final points
    fun: np.ndarray  # (S,) objective there
    iterations: np.ndarray  # (S,) iterations taken
    converged: np.ndarray  # (S,) a tolerance was met (not max_iter, not a failed line search)


def minimize_batch(fun, x0, *, max_iter=1000, memory=10, gtol=1e-10, ftol=1e-13,
                   max_search=20) -> BatchResult:
    """Minimise S independent problems, one from each row of ``x0`` (S, n).

    ``fun(x, rows)`` returns the objectives (k,) and gradients (k, n) of the problems
    numbered ``rows`` at the points ``x`` (k, n); ``rows`` lets a caller give each
    problem its own data (the bootstrap does). A start stops as in scipy's L-BFGS-B:
    when its largest gradient component is at most ``gtol``, or when an iteration
    improves its objective by at most ``ftol * max(|f|, 1)``; or when the line search
    finds no decrease (float precision).

    Inside, vectors are stored parameter-major, (n, S): a problem has a handful of
    parameters, and a dot product per start is then a sum of n long rows, not S sums
    of n numbers.
    """
    x_out = np.array(x0, dtype=float)
    n_starts, dim = x_out.shape
    f_out, g_out = fun(x_out, np.arange(n_starts))
    it_out = np.zeros(n_starts, dtype=int)
    conv_out = np.abs(g_out).max(axis=1) < gtol

    # state of the active starts only, compacted as starts finish
    rows = np.flatnonzero(~conv_out & np.isfinite(f_out))
    x, f, g = x_out[rows].T.copy(), f_out[rows], g_out[rows].T.copy()
    s_hist = np.zeros((memory, dim, rows.size))
    y_hist = np.zeros((memory, dim, rows.size))
    rho = np.zeros((memory, rows.size))  # 0 marks an empty slot: the two loops skip it
    gamma = np.ones(rows.size)
    fresh = np.ones(rows.size, dtype=bool)  # no curvature pair yet: scale the first step

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for it in range(max_iter):
            if rows.size == 0:
                break
            slot = it % memory  # one ring position for every start keeps the loops slices
            d = -_two_loop(g, s_hist, y_hist, rho, gamma, slot, min(it, memory))
            slope = _dot(d, g)
            uphill = slope >= 0  # lost curvature information: restart from steepest descent
            if uphill.any():
                d[:, uphill] = -g[:, uphill]
                slope[uphill] = -_dot(g[:, uphill], g[:, uphill])
                rho[:, uphill] = 0.0
                gamma[uphill] = 1.0
                fresh |= uphill
            step = np.where(fresh, np.minimum(1.0, 1.0 / np.sqrt(_dot(d, d))), 1.0)
            f_new, g_new, step = _wolfe_search(fun, x, f, d, slope, step, rows, max_search)

            moved = np.isfinite(f_new)
            s = step * d
            y = g_new - g
            sy, ss, yy = _dot(s, y), _dot(s, s), _dot(y, y)
            keep = moved & (sy > 1e-12 * np.sqrt(ss * yy))
            s_hist[slot] = np.where(keep, s, 0.0)
            y_hist[slot] = np.where(keep, y, 0.0)
            rho[slot] = np.where(keep, 1.0 / sy, 0.0)
            gamma = np.where(keep, sy / yy, gamma)
            fresh &= ~keep

            f_old = f
            decrease = f - np.where(moved, f_new, f)
            x = np.where(moved, x + s, x)
            f = np.where(moved, f_new, f)
            g = np.where(moved, g_new, g)
            done = (np.abs(g).max(axis=0) <= gtol) | (decrease <= ftol * np.maximum(np.abs(f_old), 1.0))
            stop = done | ~moved | (it + 1 == max_iter)
            if stop.any():
                out = rows[stop]
                x_out[out], f_out[out], g_out[out] = x[:, stop].T, f[stop], g[:, stop].T
                it_out[out] = it + 1
                conv_out[out] = done[stop] & moved[stop]
                go = ~stop
                rows, x, f, g = rows[go], x[:, go], f[go], g[:, go]
                s_hist, y_hist, rho = s_hist[:, :, go], y_hist[:, :, go], rho[:, go]
                gamma, fresh = gamma[go], fresh[go]
    return BatchResult(x=x_out, fun=f_out, iterations=it_out, converged=conv_out)


def _dot(u, v):
    """Per-start dot products of parameter-major vectors (n, S) -> (S,)."""
    return np.einsum("ij,ij->j", u, v)


def _wolfe_search(fun, x, f0, d, slope, step, rows, max_search, c1=1e-4, c2=0.9):
    """Step lengths meeting the weak Wolfe conditions, by cubic extrapolation and interpolation.

    Each start keeps the longest step with sufficient decrease seen so far (lo, at first
    0) and the shortest step without it (hi, at first none). While there is no hi the
    step grows: backtracking alone cannot lengthen a step, and on the flat plateaus of
    the Chinchilla objective (where a term contributes nothing) starts would crawl for
    hundreds of iterations. Once bracketed, the next trial is the minimum of the cubic
    through both ends' values and slopes, kept at least a tenth of the bracket from its
    ends (the bracket midpoint where the cubic is undefined). Where no Wolfe step is
    found, lo is taken; where lo is still 0, the objective comes back NaN and the caller
    stops that start. Vectors are parameter-major (n, S).
    """
    n = x.shape[1]
    lo, f_lo, d_lo, g_lo = np.zeros(n), f0.copy(), slope.copy(), np.zeros_like(x)
    hi, f_hi, d_hi = np.full(n, np.inf), np.full(n, np.nan), np.full(n, np.nan)
    f_new = np.full(n, np.nan)
    g_new = np.zeros_like(x)
    todo = np.arange(n)
    for _ in range(max_search):
        t = step[todo]
        ft, gt = fun((x[:, todo] + t * d[:, todo]).T, rows[todo])
        gt = gt.T
        dt = _dot(gt, d[:, todo])
        decreased = np.isfinite(ft) & (ft <= f0[todo] + c1 * t * slope[todo])
        accept = decreased & (dt >= c2 * slope[todo])
        short = decreased & ~accept
        if short.any():  # an unbracketed start steps on to the extrapolated cubic minimum
            grow = _cubic_minimum(lo[todo], f_lo[todo], d_lo[todo], t, ft, dt)
            grow = np.clip(np.where(np.isfinite(grow), grow, np.inf), 1.5 * t, 10.0 * t)
            lo[todo[short]], f_lo[todo[short]], d_lo[todo[short]] = t[short], ft[short], dt[short]
            g_lo[:, todo[short]] = gt[:, short]
        else:
            grow = t
        f_new[todo[accept]] = ft[accept]
        g_new[:, todo[accept]] = gt[:, accept]
        hi[todo[~decreased]], f_hi[todo[~decreased]], d_hi[todo[~decreased]] = (
            t[~decreased], ft[~decreased], dt[~decreased])
        grow, todo = grow[~accept], todo[~accept]
        if todo.size == 0:
            break
        left, right = lo[todo], hi[todo]
        margin = 0.1 * (right - left)
        inner = _cubic_minimum(left, f_lo[todo], d_lo[todo], right, f_hi[todo], d_hi[todo])
        inner = np.where(np.isfinite(inner), np.clip(inner, left + margin, right - margin),
                         0.5 * (left + right))
        step[todo] = np.where(np.isinf(right), grow, inner)
    fallback = np.isnan(f_new) & (lo > 0)
    f_new[fallback] = f_lo[fallback]
    g_new[:, fallback] = g_lo[:, fallback]
    step[fallback] = lo[fallback]
    return f_new, g_new, step


def _cubic_minimum(a, fa, da, b, fb, db):
    """Minimiser of the cubic with values fa, fb and slopes da, db at a and b (NaN if none)."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    d2 = np.sign(b - a) * np.sqrt(d1 * d1 - da * db)
    return b - (b - a) * (db + d2 - d1) / (db - da + 2.0 * d2)


def _two_loop(g, s_hist, y_hist, rho, gamma, slot, n_pairs):
    """H g for every problem by the two-loop recursion over the ``n_pairs`` newest slots."""
    memory = s_hist.shape[0]
    newest_first = [(slot - 1 - i) % memory for i in range(n_pairs)]
    q = g.copy()
    alpha = np.zeros(rho.shape)
    for j in newest_first:
        alpha[j] = rho[j] * _dot(s_hist[j], q)
        q -= alpha[j] * y_hist[j]
    r = gamma * q
    for j in reversed(newest_first):
        b = rho[j] * _dot(y_hist[j], r)
        r += (alpha[j] - b) * s_hist[j]
    return r
