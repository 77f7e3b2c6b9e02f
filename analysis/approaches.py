"""Approaches 1 and 2 of Hoffmann et al. (2022), and the one-variable laws L(N) and L(C).

Each works only for some study designs, so each returns its result with a ``reason``
(None when it applies) instead of raising: the report then says plainly why an approach
was skipped ("the envelope is won by only 2 model sizes", "no FLOP budget has 3 model
sizes"), which is the answer a researcher needs about their design.

- Approach 1: the envelope of all training curves (lowest loss at each FLOP count, the
  curves smoothed); the model size that achieves it gives N_opt(C), and D_opt = C / 6N.
  Caveat: a point in the middle of a cosine schedule is not what a run trained to that
  many tokens would reach, so with one schedule per size this leans to larger models.
- Approach 2: IsoFLOP profiles: for each FLOP budget with three or more model sizes, a
  parabola of the final loss in log N; its minimum gives N_opt(C).
- L(N) = E + A / N^alpha for runs that share one token budget, and L(C) = E + A / C^gamma
  for the compute frontier: the same Huber fit in log space as Approach 3, one term.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.chinchilla import HUBER_DELTA, minimize_grid, paper_grid, predict_log

SMOOTH_WINDOW = 5  # logged steps in the rolling mean that smooths training curves (Approach 1)
ENVELOPE_POINTS = 200  # FLOP counts at which the envelope is taken
SAME_BUDGET = 0.05  # runs within 5% of each other's C (or D) share a FLOP (token) budget
MIN_SIZES = 3  # distinct model sizes a frontier or a profile needs


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x^exponent, least squares in log-log space."""
    coefficient: float
    exponent: float

    @classmethod
    def fit(cls, x, y) -> PowerLaw:
        exponent, intercept = np.polyfit(np.log(x), np.log(y), 1)
        return cls(coefficient=float(np.exp(intercept)), exponent=float(exponent))

    def __call__(self, x):
        return self.coefficient * np.asarray(x, float) ** self.exponent

    def to_dict(self) -> dict:
        return {"coefficient": self.coefficient, "exponent": self.exponent}


@dataclasses.dataclass
class Allocation:
    """N_opt(C) and D_opt(C) from Approach 1 or 2; ``reason`` says why not, when not."""
    method: str
    points: pd.DataFrame  # C, N_opt, D_opt, loss (one row per budget or envelope point)
    n_opt: PowerLaw | None = None
    d_opt: PowerLaw | None = None
    reason: str | None = None
    profiles: list = dataclasses.field(default_factory=list)  # Approach 2: one dict per budget

    def to_dict(self) -> dict:
        out = {"method": self.method, "applicable": self.reason is None, "reason": self.reason}
        if self.reason is None:
            out.update(N_opt=self.n_opt.to_dict(), D_opt=self.d_opt.to_dict(),
                       n_points=len(self.points))
        if self.profiles:
            out["profiles"] = [{k: v for k, v in p.items() if k not in ("N", "loss")} for p in self.profiles]
        return out


@dataclasses.dataclass
class SaturatingLaw:
    """L(x) = E + A / x^alpha fitted to one variable (N or C); ``reason`` when not fitted."""
    variable: str
    label: str
    E: float = float("nan")
    A: float = float("nan")
    alpha: float = float("nan")
    rms_log_residual: float = float("nan")
    n_points: int = 0
    reason: str | None = None
    x: np.ndarray | None = dataclasses.field(default=None, repr=False)
    loss: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def __call__(self, x):
        return self.E + self.A / np.asarray(x, float) ** self.alpha

    def to_dict(self) -> dict:
        out = {"variable": self.variable, "label": self.label, "applicable": self.reason is None,
               "reason": self.reason}
        if self.reason is None:
            out.update(E=self.E, A=self.A, alpha=self.alpha, rms_log_residual=self.rms_log_residual,
                       n_points=self.n_points)
        return out


def fit_saturating(x, loss, variable: str, label: str, delta=HUBER_DELTA) -> SaturatingLaw:
    """E + A / x^alpha by the Approach 3 method with one term (150 grid starts)."""
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    if x.size < 4 or np.unique(x).size < 3:
        return SaturatingLaw(variable, label, reason=f"{np.unique(x).size} distinct {variable} values; need 3+ "
                                                    "and 4+ points")
    logx, logy = np.log(x)[None, :], np.log(loss)
    best = minimize_grid(logx, logy, paper_grid(1), delta=delta)
    e, a, alpha = best.theta
    rms = float(np.sqrt(np.mean((predict_log(best.theta, logx) - logy) ** 2)))
    return SaturatingLaw(variable, label, E=float(np.exp(e)), A=float(np.exp(a)), alpha=float(alpha),
                         rms_log_residual=rms, n_points=int(x.size), x=x, loss=loss)


def group_by_budget(values, tolerance=SAME_BUDGET) -> np.ndarray:
    """Group ids for values that lie within ``tolerance`` (relative) of their group's smallest.

    Token and FLOP budgets come out of whole optimizer steps, so runs meant to share a
    budget differ by up to a step's worth of tokens; exact equality would split them.
    """
    values = np.asarray(values, float)
    order = np.argsort(values, kind="stable")
    groups = np.empty(values.size, dtype=int)
    group, first = -1, None
    for i in order:
        if first is None or values[i] > first * (1.0 + tolerance):
            group, first = group + 1, values[i]
        groups[i] = group
    return groups


# ------------------------------------------------------------------- Approach 1
def envelope(runs: pd.DataFrame, curves: pd.DataFrame, n_points=ENVELOPE_POINTS) -> pd.DataFrame:
    """Lowest smoothed training loss over all runs at log-spaced FLOP counts.

    Columns C, loss, N_opt, D_opt, run. A run competes at C only within its own curve.
    """
    if curves.empty or runs.empty:
        return pd.DataFrame(columns=["C", "loss", "N_opt", "D_opt", "run"])
    used = curves[curves["run"].isin(runs["run"]) & np.isfinite(curves["loss"]) & (curves["flops"] > 0)]
    c_final = runs["C"].to_numpy()
    grid = np.logspace(np.log10(c_final.min()), np.log10(c_final.max()), n_points)
    names, table = [], []
    for name, curve in used.groupby("run", sort=True):
        smooth = curve["loss"].rolling(SMOOTH_WINDOW, min_periods=1).mean().to_numpy()
        logc = np.log(curve["flops"].to_numpy())
        inside = (np.log(grid) >= logc[0]) & (np.log(grid) <= logc[-1])
        table.append(np.where(inside, np.interp(np.log(grid), logc, smooth), np.inf))
        names.append(name)
    if not table:
        return pd.DataFrame(columns=["C", "loss", "N_opt", "D_opt", "run"])
    table = np.array(table)
    best = table.argmin(axis=0)
    found = np.isfinite(table[best, np.arange(grid.size)])
    size = runs.set_index("run")["N"]
    winner = np.array(names)[best]
    n_opt = size.loc[winner].to_numpy()
    out = pd.DataFrame({"C": grid, "loss": table[best, np.arange(grid.size)], "N_opt": n_opt,
                        "D_opt": grid / (6.0 * n_opt), "run": winner})
    return out[found].reset_index(drop=True)


def approach1(runs: pd.DataFrame, curves: pd.DataFrame) -> Allocation:
    method = "Approach 1: envelope of the training curves"
    points = envelope(runs, curves)
    if points.empty:
        return Allocation(method, points, reason="no training curves")
    sizes = points["N_opt"].nunique()
    if sizes < MIN_SIZES:
        return Allocation(method, points, reason=f"the envelope is won by only {sizes} model size(s); "
                                                 f"Approach 1 needs at least {MIN_SIZES}")
    return Allocation(method, points, n_opt=PowerLaw.fit(points["C"], points["N_opt"]),
                      d_opt=PowerLaw.fit(points["C"], points["D_opt"]))


# ------------------------------------------------------------------- Approach 2
def approach2(runs: pd.DataFrame) -> Allocation:
    method = "Approach 2: IsoFLOP profiles"
    empty = pd.DataFrame(columns=["C", "N_opt", "D_opt", "loss"])
    if runs.empty:
        return Allocation(method, empty, reason="no runs")
    groups = group_by_budget(runs["C"].to_numpy())
    profiles, rows = [], []
    for g in np.unique(groups):
        members = runs[groups == g]
        if members["N"].nunique() < MIN_SIZES:
            continue
        C = float(np.exp(np.log(members["C"]).mean()))
        x, loss = np.log(members["N"].to_numpy()), members["loss"].to_numpy()
        p2, p1, p0 = np.polyfit(x, loss, 2)
        profile = {"C": C, "n_runs": int(len(members)), "parabola": [float(p2), float(p1), float(p0)],
                   "N": members["N"].to_numpy(), "loss": loss}
        if p2 <= 0:
            profile["reason"] = "not convex (no minimum)"
        elif not x.min() <= -p1 / (2 * p2) <= x.max():
            profile["reason"] = "minimum outside the model sizes tried"
        else:
            n_opt = float(np.exp(-p1 / (2 * p2)))
            profile.update(N_opt=n_opt, D_opt=C / (6.0 * n_opt), loss_min=float(p0 - p1 ** 2 / (4 * p2)))
            rows.append({"C": C, "N_opt": n_opt, "D_opt": C / (6.0 * n_opt), "loss": profile["loss_min"]})
        profiles.append(profile)
    points = pd.DataFrame(rows, columns=empty.columns)
    if len(points) < 2:
        return Allocation(method, points, profiles=profiles, reason=(
            f"{len(points)} FLOP budget(s) with {MIN_SIZES}+ model sizes and a bracketed minimum "
            f"({len(profiles)} with {MIN_SIZES}+ sizes); Approach 2 needs at least 2"))
    return Allocation(method, points, n_opt=PowerLaw.fit(points["C"], points["N_opt"]),
                      d_opt=PowerLaw.fit(points["C"], points["D_opt"]), profiles=profiles)


# ------------------------------------------------------------------- L(N) and L(C)
def loss_vs_size(runs: pd.DataFrame, n_col="N") -> list[SaturatingLaw]:
    """L(N) for each token budget shared by 4+ runs of 3+ sizes (one fit for a one-budget study)."""
    if runs.empty:
        return [SaturatingLaw("N", "L(N)", reason="no runs")]
    groups = group_by_budget(runs["D"].to_numpy())
    fits = []
    for g in np.unique(groups):
        members = runs[groups == g]
        if len(members) >= 4 and members[n_col].nunique() >= MIN_SIZES:
            D = float(np.exp(np.log(members["D"]).mean()))
            fits.append(fit_saturating(members[n_col], members["loss"], "N", f"L(N) at D = {D:.3g} tokens"))
    if not fits:
        return [SaturatingLaw("N", "L(N)", reason=f"no token budget is shared by 4+ runs of {MIN_SIZES}+ "
                                                  "model sizes")]
    return fits


def loss_vs_compute(runs: pd.DataFrame, frontier: pd.DataFrame) -> SaturatingLaw:
    """L(C) fitted to the compute frontier: the Approach 1 envelope, else the final losses'.

    The final-loss frontier keeps each run whose loss beats every run of smaller C.
    """
    if len(frontier) >= 4:
        C, loss, label = frontier["C"], frontier["loss"], "L(C) on the training-curve envelope"
    else:
        ordered = runs.sort_values("C")
        best = ordered["loss"].cummin()
        keep = ordered["loss"].to_numpy() <= best.to_numpy()
        C, loss, label = ordered["C"][keep], ordered["loss"][keep], "L(C) on the final-loss frontier"
    return fit_saturating(C, loss, "C", label)
