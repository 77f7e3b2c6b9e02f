"""Approach 3 of Hoffmann et al. (2022): fit L(N, D) = E + A / N^alpha + B / D^beta.

Fitted as in the paper: the Huber loss (delta = 1e-3) of the residual between log L and
LSE(a - alpha log N, b - beta log D, e), with A = e^a, B = e^b, E = e^e, minimised by
L-BFGS from every point of the paper's grid of initialisations; the best objective wins.
Fitting in log space with a robust loss keeps a few noisy or under-trained runs from
pulling the exponents.

The same objective with one power term fits the simpler laws L(N) = E + A / N^alpha and
L(C) (see ``approaches.py``). Parameter vectors are laid out ``[e, a_1..a_K, alpha_1..alpha_K]``.

Uncertainty comes from a bootstrap over runs. Each resample restarts from the full-data
optimum and the next few best distinct local optima of the grid (not the whole grid):
resamples stay near the full-data fit, and 200 resamples then cost a fraction of one
grid fit. All resamples are one batched minimisation with per-resample point weights.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from analysis.lbfgs import minimize_batch

HUBER_DELTA = 1e-3
PARAMETERS = ("E", "A", "B", "alpha", "beta")
# the paper's grid of initialisations
GRID_EXPONENTS = np.arange(0.0, 2.01, 0.5)
GRID_E = np.arange(-1.0, 1.01, 0.5)
GRID_LOG_COEFFICIENTS = np.arange(0.0, 25.1, 5.0)
# scipy's L-BFGS-B stopping rule, with tighter tolerances than its defaults: the objective
# is small (a sum of ~delta * |residual|) and the default ftol (2.2e-9, absolute when the
# objective is below 1) stops while the parameters are still moving.
FTOL = 1e-12
GTOL = 1e-9
# a term with more distinct values than this is exponentiated per point, not gathered from levels
MAX_GATHERED_LEVELS = 24
# The minimiser is unbounded (plain L-BFGS), so this box is not a constraint: it is where a
# fit stops measuring. Outside it a term has been traded for another (E -> 0 while a power
# term takes the floor, an exponent -> 0 or runs high with its coefficient -> inf). Rows
# [e, a, b, alpha, beta] as (low, high): E in [1e-3, 1e3], A and B in [e^-10, e^100],
# exponents in [0, 3] (measured exponents are ~0.05-0.6).
PARAMETER_BOX = np.array([[-7.0, 7.0], [-10.0, 100.0], [-10.0, 100.0], [0.0, 3.0], [0.0, 3.0]])


def paper_grid(n_terms: int = 2) -> np.ndarray:
    """The paper's initialisations as rows ``[e, a_1..a_K, alpha_1..alpha_K]``.

    For two terms: 5 e x 6 a x 6 b x 5 alpha x 5 beta = 4,500 starts.
    """
    axes = [GRID_E] + [GRID_LOG_COEFFICIENTS] * n_terms + [GRID_EXPONENTS] * n_terms
    return np.array(list(itertools.product(*axes)), dtype=float)


class HuberLSE:
    """The objective and its gradient for a batch of parameter rows.

    ``logx`` (K, P): log covariates (log N, log D); ``logy`` (P,): log losses; ``weights``
    None or (R, P): point weights of problem r (bootstrap counts). ``obj(theta, rows)``
    returns f (S,) = sum_p w Huber(LSE - log L) and its gradient (S, 1+2K) for
    parameter rows ``theta`` (S, 1+2K) of problems ``rows``.

    A study has a handful of model sizes and token budgets, so the power terms are
    exponentiated once per distinct value (level); per point there is only the
    log-sum-exp, the residual and its Huber weight, and the gradient's sums over points
    are taken per level. When the points form a grid of the levels (sizes x budgets,
    one run per cell, at least half the cells present), the sum at every cell is one
    broadcast add and the per-level sums are two small matrix products; absent cells
    weigh 0. Otherwise the levels are gathered to the points and summed back with one
    product against a one-hot (point x level) matrix, and a term with more levels than
    ``MAX_GATHERED_LEVELS`` (token counts of an IsoFLOP design) is computed per point.
    Rows are processed in chunks that fit in cache, in work arrays kept between calls
    (so one instance serves one thread at a time). The log-sum-exp needs no max shift:
    the terms are log losses, far from overflow at any sensible point (an overflowing
    trial step gives inf and the line search rejects it).
    """

    def __init__(self, logx, logy, weights=None, delta=HUBER_DELTA):
        logx = np.atleast_2d(np.asarray(logx, float))
        logy = np.asarray(logy, float)
        weights = None if weights is None else np.atleast_2d(np.asarray(weights, float))
        self.n_terms = logx.shape[0]
        self.delta = delta
        self.levels, index = zip(*(np.unique(x, return_inverse=True) for x in logx))
        self.shape = tuple(len(lv) for lv in self.levels)
        cell = np.ravel_multi_index(index, self.shape)
        self.grid = np.unique(cell).size == cell.size and 2 * cell.size >= np.prod(self.shape)
        if self.grid:  # points scattered into the cells of the level grid
            self.logy = np.zeros(np.prod(self.shape))
            self.logy[cell] = logy
            present = np.zeros(self.logy.size)
            present[cell] = 1.0
            if weights is not None:
                self.weights = np.zeros((len(weights), self.logy.size))
                self.weights[:, cell] = weights
            else:
                self.weights = None if present.all() else present
            # each term's levels as a middle axis, and the ones that sum the other axes away
            self.axes = [(int(np.prod(self.shape[:k])), n, int(np.prod(self.shape[k + 1:])))
                         for k, n in enumerate(self.shape)]
            self.ones = [(np.ones(before), np.ones(after)) for before, _, after in self.axes]
            self.broadcast = [(1,) * k + (n,) + (1,) * (self.n_terms - 1 - k) for k, n in enumerate(self.shape)]
            self.per_point = [False] * self.n_terms
        else:  # levels gathered to the points; a term with many levels is kept per point
            self.logy, self.weights = logy, weights
            self.index = [None if n > MAX_GATHERED_LEVELS else ix for n, ix in zip(self.shape, index)]
            self.levels = [x if ix is None else lv for x, lv, ix in zip(logx, self.levels, self.index)]
            gathered = [np.eye(len(lv))[ix] for lv, ix in zip(self.levels, self.index) if ix is not None]
            self.onehot = np.hstack(gathered) if gathered else None
            self.per_point = [ix is None for ix in self.index]
        self.chunk = max(16, 2**16 // self.logy.size)
        self.buffers = np.empty((4, self.chunk, self.logy.size))

    def __call__(self, theta, rows=None):
        theta = np.asarray(theta, float)
        K = self.n_terms
        f = np.empty(theta.shape[0])
        g = np.empty_like(theta)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            exp_e = np.exp(theta[:, 0])
            # power terms per level for the whole batch; terms kept per point, chunk by chunk
            at_levels = [None if self.per_point[k] else
                         np.exp(theta[:, 1 + k, None] - theta[:, 1 + K + k, None] * self.levels[k])
                         for k in range(K)]
            per_level = [None if at is None else np.empty_like(at) for at in at_levels]
            point_sums = np.empty(theta.shape[0])  # sum over points of Huber' / total
            for lo in range(0, theta.shape[0], self.chunk):
                chunk = slice(lo, lo + self.chunk)
                th = theta[chunk]
                at_chunk = [np.exp(th[:, 1 + k, None] - th[:, 1 + K + k, None] * self.levels[k])
                            if at is None else at[chunk] for k, at in enumerate(at_levels)]
                # work arrays reused across calls: no allocation (and no page faults) per chunk
                total, r, clipped, weighted = (b[:len(th)] for b in self.buffers)
                self._sum_terms(exp_e[chunk], at_chunk, total, r)
                np.log(total, out=r)
                r -= self.logy
                np.clip(r, -self.delta, self.delta, out=clipped)  # Huber'(r)
                if self.weights is None:
                    weighted = clipped
                else:
                    weights = self.weights if self.weights.ndim == 1 else self.weights[rows[chunk]]
                    np.multiply(clipped, weights, out=weighted)
                # Huber(r) = clipped * (r - clipped / 2)
                f[chunk] = np.einsum("sp,sp->s", weighted, r) - 0.5 * np.einsum("sp,sp->s", weighted, clipped)
                weighted /= total
                for k, sums in enumerate(self._level_sums(weighted)):
                    if k == 0:
                        point_sums[chunk] = sums.sum(axis=1)
                    if per_level[k] is not None:
                        per_level[k][chunk] = sums
                    else:  # a per-point term: its gradient now, while the chunk is in cache
                        z = at_chunk[k] * sums
                        g[chunk, 1 + k] = z.sum(axis=1)
                        g[chunk, 1 + K + k] = -(z @ self.levels[k])
            g[:, 0] = exp_e * point_sums
            for k, (at, sums) in enumerate(zip(at_levels, per_level)):
                if at is not None:
                    at *= sums
                    g[:, 1 + k] = at.sum(axis=1)
                    g[:, 1 + K + k] = -(at @ self.levels[k])
        return f, g

    def _sum_terms(self, exp_e, at_levels, total, scratch):
        """E + the power terms at every point (or cell), into ``total`` (s, P)."""
        if self.grid:
            s = len(exp_e)
            terms = (at_levels[0] + exp_e[:, None]).reshape(s, *self.broadcast[0])
            for k in range(1, self.n_terms - 1):
                terms = terms + at_levels[k].reshape(s, *self.broadcast[k])
            if self.n_terms == 1:
                total[:] = terms
            else:
                last = at_levels[-1].reshape(s, *self.broadcast[-1])
                np.add(terms, last, out=total.reshape(s, *self.shape))
            return
        for k, (at, index) in enumerate(zip(at_levels, self.index)):
            into = total if k == 0 else scratch
            if index is None:
                into[:] = at
            else:
                np.take(at, index, axis=1, out=into)
            if k == 0:
                total += exp_e[:, None]
            else:
                total += scratch

    def _level_sums(self, values):
        """Sums of ``values`` (s, P) over the points of each level of each term: [(s, n_k)]."""
        out = []
        if not self.grid:
            sums = None if self.onehot is None else values @ self.onehot
            start = 0
            for levels, index in zip(self.levels, self.index):
                if index is None:  # one level per point
                    out.append(values)
                else:
                    out.append(sums[:, start:start + len(levels)])
                    start += len(levels)
            return out
        for (before, n, after), (ones_before, ones_after) in zip(self.axes, self.ones):
            v = values.reshape(len(values), before, n, after)
            v = v @ ones_after if after > 1 else v[..., 0]  # (s, before, n)
            out.append(ones_before @ v if before > 1 else v[:, 0])
        return out


def huber_lse(theta, logx, logy, weights=None, delta=HUBER_DELTA):
    """``HuberLSE`` for one call; ``weights`` (S, P) go with the rows of ``theta``."""
    theta = np.atleast_2d(theta)
    return HuberLSE(logx, logy, weights, delta)(theta, np.arange(theta.shape[0]))


def predict_log(theta, logx):
    """log of E + sum_k A_k / x_k^alpha_k for one parameter row."""
    logx = np.atleast_2d(logx)
    n_terms = logx.shape[0]
    terms = [np.full(logx.shape[1], theta[0])]
    terms += [theta[1 + k] - theta[1 + n_terms + k] * logx[k] for k in range(n_terms)]
    return np.logaddexp.reduce(np.array(terms), axis=0)


def minimize_starts(logx, logy, starts, *, weights=None, problem_of=None, delta=HUBER_DELTA,
                    ftol=FTOL, gtol=GTOL):
    """Batched L-BFGS from every row of ``starts`` ([e, a.., alpha..]), in standardised covariates.

    Each log covariate is centred and scaled to unit spread: a - alpha log x =
    (a - alpha m) - (alpha s) (log x - m) / s, so the same law has the coordinates
    a' = a - alpha m, alpha' = alpha s there. In the paper's coordinates a and alpha are
    strongly correlated (log N ~ 20, spread ~ 2), and L-BFGS, which is not invariant to
    such a change of coordinates, needs ~10 % fewer evaluations in the standardised ones.
    The starts are mapped in exactly and the endpoints back, so the grid and the objective
    values are the paper's. ``weights`` (R, P) with ``problem_of`` (S,) give start i the
    point weights of problem ``problem_of[i]`` (the bootstrap). ``gtol`` applies to the
    gradient in the standardised coordinates. Returns the ``BatchResult``.
    """
    logx = np.atleast_2d(np.asarray(logx, float))
    K = logx.shape[0]
    center = logx.mean(axis=1)
    scale = logx.std(axis=1)
    scale[scale == 0] = 1.0
    objective = HuberLSE((logx - center[:, None]) / scale[:, None], logy, weights, delta)
    fun = objective if problem_of is None else (lambda x, rows: objective(x, problem_of[rows]))
    x0 = np.array(starts, float)
    x0[:, 1:1 + K] -= x0[:, 1 + K:] * center
    x0[:, 1 + K:] *= scale
    result = minimize_batch(fun, x0, ftol=ftol, gtol=gtol)
    result.x[:, 1 + K:] /= scale
    result.x[:, 1:1 + K] += result.x[:, 1 + K:] * center
    return result


@dataclasses.dataclass
class GridFit:
    """The best of a batched grid minimisation, with the other basins it found."""
    theta: np.ndarray  # best row [e, a.., alpha..]
    objective: float
    n_starts: int
    n_converged: int
    local_optima: np.ndarray  # best distinct endpoints, best first (for bootstrap restarts)
    objectives: np.ndarray  # (S,) every start's final objective, inf where not finite


def minimize_grid(logx, logy, starts, *, delta=HUBER_DELTA, ftol=FTOL, gtol=GTOL,
                  n_optima=5) -> GridFit:
    """Run L-BFGS from every start at once and keep the best endpoint."""
    result = minimize_starts(logx, logy, starts, delta=delta, ftol=ftol, gtol=gtol)
    fun = np.where(np.isfinite(result.fun), result.fun, np.inf)
    order = np.argsort(fun, kind="stable")
    optima = []
    for i in order:
        if not np.isfinite(fun[i]) or len(optima) == n_optima:
            break
        if all(np.abs(result.x[i] - result.x[j]).max() > 1e-3 for j in optima):
            optima.append(i)
    best = order[0]
    return GridFit(theta=result.x[best], objective=float(fun[best]), n_starts=len(starts),
                   n_converged=int(result.converged.sum()), local_optima=result.x[optima],
                   objectives=fun)


def scipy_reference(logx, logy, starts, *, delta=HUBER_DELTA, ftol=FTOL, gtol=GTOL):
    """The plain per-start loop: scipy L-BFGS-B from each start, best objective wins.

    Kept as the reference that the batched minimiser is tested and benchmarked against,
    with the same stopping rule and tolerances and a plain one-start objective (what a
    straightforward implementation writes). Returns (theta, objective).
    """
    from scipy.optimize import minimize

    logx = np.atleast_2d(np.asarray(logx, float))
    n_terms = logx.shape[0]

    def one(theta):
        terms = np.vstack([np.full(logx.shape[1], theta[0]),
                           theta[1:1 + n_terms, None] - theta[1 + n_terms:, None] * logx])
        shift = terms.max(axis=0)
        weights = np.exp(terms - shift)
        total = weights.sum(axis=0)
        r = shift + np.log(total) - logy
        clipped = np.clip(r, -delta, delta)
        f = np.sum(clipped * (r - 0.5 * clipped))
        dterms = weights * (clipped / total)  # d f / d term_k, per point
        grad = np.concatenate([[dterms[0].sum()], dterms[1:].sum(axis=1),
                               -(dterms[1:] * logx).sum(axis=1)])
        return f, grad

    best = None
    for start in starts:
        res = minimize(one, start, jac=True, method="L-BFGS-B",
                       options={"ftol": ftol, "gtol": gtol, "maxiter": 1000})
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    return best.x, float(best.fun)


# ----------------------------------------------------------------- the law itself
@dataclasses.dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta and the compute-optimal allocation it implies."""
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def from_theta(cls, theta) -> ChinchillaLaw:
        e, a, b, alpha, beta = (float(v) for v in theta)
        return cls(E=np.exp(e), A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta)

    def loss(self, N, D):
        return self.E + self.A / np.asarray(N, float) ** self.alpha + self.B / np.asarray(D, float) ** self.beta

    # With C = 6 N D, minimising L at fixed C gives N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b.
    @property
    def a(self) -> float:
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def n_opt(self, C):
        return self.G * (np.asarray(C, float) / 6.0) ** self.a

    def d_opt(self, C):
        return (np.asarray(C, float) / 6.0) ** self.b / self.G

    def tokens_per_param(self, C):
        return self.d_opt(C) / self.n_opt(C)

    def loss_opt(self, C):
        return self.loss(self.n_opt(C), self.d_opt(C))


def allocation_arrays(samples: np.ndarray, budgets) -> dict[str, np.ndarray]:
    """Derived quantities for many parameter rows (E, A, B, alpha, beta) at once.

    Returns a, b, G (R,) and N_opt, D_opt, tokens_per_param, loss_opt (R, len(budgets)).
    """
    E, A, B, alpha, beta = samples.T
    C = np.asarray(budgets, float)[None, :] / 6.0
    a = beta / (alpha + beta)
    b = alpha / (alpha + beta)
    with np.errstate(all="ignore"):
        G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
        n_opt = G[:, None] * C ** a[:, None]
        d_opt = C ** b[:, None] / G[:, None]
        loss = E[:, None] + A[:, None] / n_opt ** alpha[:, None] + B[:, None] / d_opt ** beta[:, None]
    return {"a": a, "b": b, "G": G, "N_opt": n_opt, "D_opt": d_opt,
            "tokens_per_param": d_opt / n_opt, "loss_opt": loss}


# ----------------------------------------------------------------- fit + bootstrap
@dataclasses.dataclass
class ScalingLawFit:
    """What ``fit_scaling_law`` returns: the fitted law, its bootstrap, and fit quality."""
    law: ChinchillaLaw
    objective: float
    rms_log_residual: float  # sqrt(mean((log L_fit - log L)^2)) over the points used
    n_points: int
    n_starts: int
    n_converged: int
    samples: np.ndarray  # (R, 5) bootstrap parameters E, A, B, alpha, beta
    level: float = 0.95
    settings: dict = dataclasses.field(default_factory=dict)
    data: object = None  # the N, D, loss table used (a DataFrame)
    start_objectives: np.ndarray | None = None  # (S,) each grid start's final objective
    grid_box: np.ndarray | None = None  # (5, 2) the span of the starts, rows as PARAMETER_BOX

    @property
    def theta(self) -> np.ndarray:
        """The optimum as [e, a, b, alpha, beta], the coordinates of PARAMETER_BOX."""
        return sample_thetas(np.array([[getattr(self.law, p) for p in PARAMETERS]]))[0]

    def interval(self, values) -> tuple[float, float]:
        """Percentile interval of bootstrap values at ``level`` (NaN without a bootstrap)."""
        values = np.asarray(values, float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return (float("nan"), float("nan"))
        tail = 50.0 * (1.0 - self.level)
        with np.errstate(over="ignore", invalid="ignore"):  # interpolating between ~1e300 values
            lo, hi = np.percentile(values, [tail, 100.0 - tail])
        return (float(lo), float(hi))

    def parameters(self) -> dict[str, dict[str, float]]:
        """Every parameter and allocation exponent with its interval."""
        derived = allocation_arrays(self.samples, []) if len(self.samples) else {}
        out = {}
        for i, name in enumerate(PARAMETERS):
            lo, hi = self.interval(self.samples[:, i]) if len(self.samples) else (np.nan, np.nan)
            out[name] = {"value": float(getattr(self.law, name)), "low": lo, "high": hi}
        for name in ("a", "b", "G"):
            lo, hi = self.interval(derived[name]) if derived else (np.nan, np.nan)
            out[name] = {"value": float(getattr(self.law, name)), "low": lo, "high": hi}
        return out

    def predict(self, budgets):
        """Compute-optimal N, D, tokens per parameter and loss at each budget C (FLOPs)."""
        import pandas as pd

        budgets = np.asarray(budgets, float)
        point = allocation_arrays(np.array([[getattr(self.law, p) for p in PARAMETERS]]), budgets)
        boot = allocation_arrays(self.samples, budgets) if len(self.samples) else None
        rows = []
        for j, C in enumerate(budgets):
            row = {"C": float(C)}
            for name in ("N_opt", "D_opt", "tokens_per_param", "loss_opt"):
                row[name] = float(point[name][0, j])
                lo, hi = self.interval(boot[name][:, j]) if boot else (np.nan, np.nan)
                row[f"{name}_low"], row[f"{name}_high"] = lo, hi
            rows.append(row)
        return pd.DataFrame(rows)


def check_design(N, D) -> str | None:
    """Why N and D cannot identify L(N, D), or None when they can.

    With a fixed tokens-per-parameter ratio, log N and log D move together and the
    exponents trade off freely; with a single N or a single D a term is a constant.
    """
    logN, logD = np.log(np.asarray(N, float)), np.log(np.asarray(D, float))
    if len(logN) < 2 * len(PARAMETERS):
        return f"only {len(logN)} runs; Approach 3 needs at least {2 * len(PARAMETERS)}"
    if np.unique(np.round(logN, 6)).size < 3:
        return "fewer than 3 distinct model sizes"
    if np.unique(np.round(logD, 3)).size < 3:
        return "fewer than 3 distinct token counts (one token budget: see the L(N) fit)"
    if abs(np.corrcoef(logN, logD)[0, 1]) > 0.99:
        return ("model size and token count move together (a fixed tokens-per-parameter ratio): "
                "N and D cannot be separated; see L(N) and L(C)")
    return None


def fit_scaling_law(df, *, n_col="N", d_col="D", loss_col="loss", bootstrap=200, seed=0,
                    level=0.95, grid=None, delta=HUBER_DELTA) -> ScalingLawFit:
    """Fit Approach 3 to a table with N, D and loss columns (one row per run).

    ``bootstrap`` resamples of the runs give the intervals (0 skips them); ``seed``
    makes them reproducible. Raises ValueError when the design cannot identify the law.
    """
    N = np.asarray(df[n_col], float)
    D = np.asarray(df[d_col], float)
    loss = np.asarray(df[loss_col], float)
    ok = np.isfinite(N) & np.isfinite(D) & np.isfinite(loss) & (N > 0) & (D > 0) & (loss > 0)
    N, D, loss = N[ok], D[ok], loss[ok]
    reason = check_design(N, D)
    if reason:
        raise ValueError(f"cannot fit L(N, D): {reason}")
    logx, logy = np.log(np.stack([N, D])), np.log(loss)
    starts = paper_grid(2) if grid is None else np.asarray(grid, float)
    best = minimize_grid(logx, logy, starts, delta=delta)
    rms = float(np.sqrt(np.mean((predict_log(best.theta, logx) - logy) ** 2)))
    samples = bootstrap_samples(logx, logy, best.local_optima, bootstrap, seed, delta)
    import pandas as pd

    return ScalingLawFit(
        law=ChinchillaLaw.from_theta(best.theta), objective=best.objective, rms_log_residual=rms,
        n_points=int(N.size), n_starts=best.n_starts, n_converged=best.n_converged,
        samples=samples, level=level,
        settings={"huber_delta": delta, "n_starts": best.n_starts, "grid": "paper" if grid is None else "custom",
                  "ftol": FTOL, "gtol": GTOL, "bootstrap": int(bootstrap), "seed": int(seed),
                  "level": level, "optimizer": "batched L-BFGS (analysis.lbfgs)"},
        data=pd.DataFrame({"N": N, "D": D, "loss": loss}), start_objectives=best.objectives,
        grid_box=np.column_stack([starts.min(axis=0), starts.max(axis=0)]))


def bootstrap_samples(logx, logy, restarts, n_resamples, seed, delta=HUBER_DELTA) -> np.ndarray:
    """Parameters (E, A, B, alpha, beta) fitted to ``n_resamples`` resamples of the points.

    Resampling runs with replacement is a weight (the count) on each point, so all
    resamples x restarts are one batched minimisation; each resample keeps its best.
    """
    if n_resamples <= 0:
        return np.empty((0, len(PARAMETERS)))
    n_points = logx.shape[1]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_points, np.full(n_points, 1.0 / n_points), size=n_resamples)
    counts = counts.astype(float)
    n_restarts = len(restarts)
    starts = np.tile(restarts, (n_resamples, 1))
    resample_of = np.repeat(np.arange(n_resamples), n_restarts)
    result = minimize_starts(logx, logy, starts, weights=counts, problem_of=resample_of, delta=delta)
    fun = np.where(np.isfinite(result.fun), result.fun, np.inf).reshape(n_resamples, n_restarts)
    best = result.x.reshape(n_resamples, n_restarts, -1)[np.arange(n_resamples), fun.argmin(axis=1)]
    e, a, b, alpha, beta = best.T
    with np.errstate(over="ignore"):  # a resample that runs off to A = inf is dropped by interval()
        return np.column_stack([np.exp(e), np.exp(a), np.exp(b), alpha, beta])


def sample_thetas(samples) -> np.ndarray:
    """Rows (E, A, B, alpha, beta) back to [e, a, b, alpha, beta]; a run-off A = inf gives inf."""
    samples = np.asarray(samples, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.column_stack([np.log(samples[:, :3]), samples[:, 3:]])


def outside_box(thetas) -> np.ndarray:
    """(R, 5) True where a parameter row [e, a, b, alpha, beta] is at or beyond PARAMETER_BOX
    (or not finite)."""
    thetas = np.atleast_2d(thetas)
    return ~((thetas > PARAMETER_BOX[:, 0]) & (thetas < PARAMETER_BOX[:, 1]))
