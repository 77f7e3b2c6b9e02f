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
    """
    x_out = np.array(x0, dtype=float)
    n_starts, dim = x_out.shape
    f_out, g_out = fun(x_out, np.arange(n_starts))
    it_out = np.zeros(n_starts, dtype=int)
    conv_out = np.abs(g_out).max(axis=1) < gtol

    # state of the active starts only, compacted as starts finish
    rows = np.flatnonzero(~conv_out & np.isfinite(f_out))
    x, f, g = x_out[rows], f_out[rows], g_out[rows]
    # history slot-major, so that one slot of every start is a contiguous block
    s_hist = np.zeros((memory, rows.size, dim))
    y_hist = np.zeros((memory, rows.size, dim))
    rho = np.zeros((memory, rows.size))  # 0 marks an empty slot: the two loops skip it
    gamma = np.ones(rows.size)
    fresh = np.ones(rows.size, dtype=bool)  # no curvature pair yet: scale the first step

    for it in range(max_iter):
        if rows.size == 0:
            break
        slot = it % memory  # one ring position for every start keeps the loops slices
        d = -_two_loop(g, s_hist, y_hist, rho, gamma, slot)
        slope = np.einsum("ij,ij->i", d, g)
        uphill = slope >= 0  # lost curvature information: restart from steepest descent
        if uphill.any():
            d[uphill] = -g[uphill]
            slope[uphill] = -np.einsum("ij,ij->i", g[uphill], g[uphill])
            rho[:, uphill] = 0.0
            gamma[uphill] = 1.0
            fresh |= uphill
        step = np.where(fresh, np.minimum(1.0, 1.0 / np.linalg.norm(d, axis=1)), 1.0)
        f_new, g_new, step = _wolfe_search(fun, x, f, d, slope, step, rows, max_search)

        moved = np.isfinite(f_new)
        s = step[:, None] * d
        y = g_new - g
        sy = np.einsum("ij,ij->i", s, y)
        keep = moved & (sy > 1e-12 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1))
        s_hist[slot] = np.where(keep[:, None], s, 0.0)
        y_hist[slot] = np.where(keep[:, None], y, 0.0)
        rho[slot] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)
        yy = np.einsum("ij,ij->i", y, y)
        gamma = np.where(keep, sy / np.where(keep, yy, 1.0), gamma)
        fresh &= ~keep

        f_old = f
        decrease = f - np.where(moved, f_new, f)
        x = np.where(moved[:, None], x + s, x)
        f = np.where(moved, f_new, f)
        g = np.where(moved[:, None], g_new, g)
        done = (np.abs(g).max(axis=1) <= gtol) | (decrease <= ftol * np.maximum(np.abs(f_old), 1.0))
        stop = done | ~moved | (it + 1 == max_iter)
        if stop.any():
            out = rows[stop]
            x_out[out], f_out[out], g_out[out] = x[stop], f[stop], g[stop]
            it_out[out] = it + 1
            conv_out[out] = done[stop] & moved[stop]
            go = ~stop
            rows, x, f, g = rows[go], x[go], f[go], g[go]
            s_hist, y_hist, rho = s_hist[:, go], y_hist[:, go], rho[:, go]
            gamma, fresh = gamma[go], fresh[go]
    return BatchResult(x=x_out, fun=f_out, iterations=it_out, converged=conv_out)


def _wolfe_search(fun, x, f0, d, slope, step, rows, max_search, c1=1e-4, c2=0.9):
    """Step lengths meeting the weak Wolfe conditions, by expansion and bisection.

    Backtracking alone cannot lengthen a step, and on the flat plateaus of the
    Chinchilla objective (where a term contributes nothing) starts then crawl for
    hundreds of iterations; expanding until the slope flattens lets them escape.
    Where no Wolfe step is found, the longest step with sufficient decrease is taken;
    where there is none, the objective comes back NaN and the caller stops that start.
    """
    n = x.shape[0]
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    f_new = np.full(n, np.nan)
    g_new = np.zeros_like(x)
    f_lo = np.full(n, np.nan)
    g_lo = np.zeros_like(x)
    todo = np.arange(n)
    for _ in range(max_search):
        ft, gt = fun(x[todo] + step[todo, None] * d[todo], rows[todo])
        decreased = np.isfinite(ft) & (ft <= f0[todo] + c1 * step[todo] * slope[todo])
        steep = np.einsum("ij,ij->i", gt, d[todo]) < c2 * slope[todo]
        accept = decreased & ~steep
        f_new[todo[accept]] = ft[accept]
        g_new[todo[accept]] = gt[accept]
        short = todo[decreased & steep]
        lo[short] = step[short]
        f_lo[short] = ft[decreased & steep]
        g_lo[short] = gt[decreased & steep]
        hi[todo[~decreased]] = step[todo[~decreased]]
        todo = todo[~accept]
        if todo.size == 0:
            break
        step[todo] = np.where(np.isinf(hi[todo]), 4.0 * step[todo], 0.5 * (lo[todo] + hi[todo]))
    fallback = np.isnan(f_new) & np.isfinite(f_lo)
    f_new[fallback] = f_lo[fallback]
    g_new[fallback] = g_lo[fallback]
    step[fallback] = lo[fallback]
    return f_new, g_new, step


def _two_loop(g, s_hist, y_hist, rho, gamma, slot):
    """H g for every problem by the two-loop recursion; ``slot`` is the next write slot."""
    memory = s_hist.shape[0]
    newest_first = [(slot - 1 - i) % memory for i in range(memory)]
    q = g.copy()
    alpha = np.zeros(rho.shape)
    for j in newest_first:
        alpha[j] = rho[j] * np.einsum("ij,ij->i", s_hist[j], q)
        q -= alpha[j, :, None] * y_hist[j]
    r = gamma[:, None] * q
    for j in reversed(newest_first):
        b = rho[j] * np.einsum("ij,ij->i", y_hist[j], r)
        r += (alpha[j] - b)[:, None] * s_hist[j]
    return r
