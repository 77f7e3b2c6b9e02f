"""What a careful reviewer asks of a fit before believing it, and the verdict.

A fit always returns numbers; these checks say whether the study could have told them
apart. ``review(study, law)`` looks at four things:

- identifiability, from the fit and its bootstrap: how many resamples ran off (a
  parameter outside ``chinchilla.PARAMETER_BOX``, or not finite), how wide the 95%
  intervals of E, alpha, beta and the allocation exponent a are, how many grid starts
  reach the best objective, and whether the optimum itself sits at the box's edge or
  outside the grid of starts;
- the design: how many model sizes and token budgets, the spread of D/N, whether a
  bigger model ever loses at a fixed budget, and whether one learning rate served every size;
- the accounting: the fit under the other parameter count (total as Hoffmann et al., or
  non-embedding as Kaplan et al.) when the two differ by more than 5% for some run, since
  the exponents move with it; warmups longer than 10% of a run's steps; final losses read
  before the learning-rate schedule ended (both bias the small or short runs upwards);
- extrapolation: the fit without the largest model size, asked to predict that size's
  losses (the check that a law fitted on small runs holds at the next scale), and which
  budgets lie beyond 10x the largest run's compute.

The verdict is "unconstrained" when the fit measures nothing (many run-offs, an interval
past +-100%, an optimum at the box), "weakly constrained" when it measures something
loosely or on a thin design, else "well constrained". Accounting and extrapolation
findings are warnings, never reasons: they say what the numbers mean or how far they
carry, not whether the study measured them. ``review`` is a pure function of the runs
table and the fit (the extra fits it needs it makes itself, without a bootstrap and from
the fit's optimum), so a test can build either directly.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd

from analysis import chinchilla
from analysis.chinchilla import PARAMETER_BOX, outside_box, sample_thetas

WELL, WEAK, UNCONSTRAINED = "well constrained", "weakly constrained", "unconstrained"
# share of bootstrap resamples that run off
RUN_OFF_UNCONSTRAINED = 0.20
RUN_OFF_WEAK = 0.05
# 95% half-width / estimate of E, alpha and beta
RELATIVE_WIDTH_UNCONSTRAINED = 1.0
RELATIVE_WIDTH_WEAK = 0.5
# 95% half-width of the allocation exponent a (N_opt ∝ C^a)
ALLOCATION_WIDTH_WEAK = 0.2
# a grid start "reaches the best optimum" when its objective is within this fraction of it
SAME_OPTIMUM = 1e-3
# at least this many model sizes and token budgets, or the design is thin
MIN_LEVELS = 3
# token counts (or sizes) within this ratio are one budget: batch rounding moves D a little
SAME_LEVEL = 1.02
BOX_NAMES = ("E", "A", "B", "alpha", "beta")  # rows of PARAMETER_BOX, as the user knows them
INTERVAL_NAMES = ("E", "alpha", "beta")
# a budget beyond this many times the largest run's compute is an extrapolation (tables and plots)
EXTRAPOLATION_FACTOR = 10.0
# total and non-embedding counts further apart than this (for some run) get a fit each
COUNTS_DIFFER = 0.05
# a warmup longer than this share of the planned optimizer steps is a warning
WARMUP_SHARE = 0.10
# mean |relative error| of the held-out largest size's predicted losses above which to warn
HOLDOUT_ERROR_WARN = 0.10
# runs named in a warning; the rest are counted
MAX_NAMED = 5
# The extra fits (other parameter count, hold-out) start from the main optimum and a coarse
# paper grid (every other value of each axis, 243 starts) instead of all 4,500: their optima
# are near the main one, and each then costs about a fifth of a full grid fit (the batched
# minimiser's time goes with its slowest start, not the number of starts). On grid, IsoFLOP
# and small designs at 1-3% noise they reached the full grid's objective every time.
REFIT_GRID = np.array(list(itertools.product(
    chinchilla.GRID_E[::2], chinchilla.GRID_LOG_COEFFICIENTS[::2], chinchilla.GRID_LOG_COEFFICIENTS[::2],
    chinchilla.GRID_EXPONENTS[::2], chinchilla.GRID_EXPONENTS[::2])))


def extrapolated(budgets, runs_flops) -> np.ndarray:
    """Which ``budgets`` (FLOPs) lie beyond EXTRAPOLATION_FACTOR x the largest run's C."""
    top = float(np.max(runs_flops)) if len(runs_flops) else 0.0
    return np.asarray(budgets, float) > EXTRAPOLATION_FACTOR * top


@dataclasses.dataclass
class Review:
    verdict: str  # WELL, WEAK or UNCONSTRAINED
    reasons: list[str]  # why not WELL, each a short phrase with its number
    identifiability: dict | None  # None when Approach 3 was not fitted
    design: dict
    warnings: list[str]  # every finding to read, severe or not
    accounting: dict = dataclasses.field(default_factory=dict)
    extrapolation: dict = dataclasses.field(default_factory=dict)

    @property
    def line(self) -> str:
        """The verdict as one line: 'weakly constrained: <reason>; <reason>'."""
        return self.verdict + (": " + "; ".join(self.reasons) if self.reasons else "")

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "line": self.line, "reasons": self.reasons,
                "identifiability": self.identifiability, "design": self.design,
                "accounting": self.accounting, "extrapolation": self.extrapolation,
                "warnings": self.warnings}


def review(study, law, *, n_col="N", law_reason=None, budgets=()) -> Review:
    """Check the fit ``law`` (a ScalingLawFit, or None with ``law_reason``) of ``study``.

    ``budgets``: the FLOP budgets of the compute-optimal predictions, for the N_opt of
    each parameter count and for marking extrapolations.
    """
    runs = study.runs
    design, warnings, severe = check_design(runs, n_col)
    accounting, accounting_warnings = check_accounting(runs, law, n_col, budgets)
    extrapolation, extrapolation_warnings = check_extrapolation(runs, law, n_col, budgets)
    warnings += accounting_warnings + extrapolation_warnings
    if law is None:
        counts = [w for w in severe if w.startswith("only ")]
        reasons = (counts or [f"not fitted: {law_reason or 'no fit'}"]) + [w for w in severe if w not in counts]
        return Review(UNCONSTRAINED, reasons, None, design, warnings, accounting, extrapolation)
    identifiability, unconstrained, weak = check_identifiability(law)
    if unconstrained:
        verdict = UNCONSTRAINED
    elif weak or severe:
        verdict = WEAK
    else:
        verdict = WELL
    return Review(verdict, unconstrained + weak + severe, identifiability, design, warnings,
                  accounting, extrapolation)


def check_identifiability(law) -> tuple[dict, list[str], list[str]]:
    """(findings, reasons for UNCONSTRAINED, reasons for WEAK) from the fit and its bootstrap."""
    unconstrained, weak = [], []
    parameters = law.parameters()
    found = {"bootstrap_resamples": len(law.samples)}
    if len(law.samples):
        run_off = float(outside_box(sample_thetas(law.samples)).any(axis=1).mean())
        found["run_off_share"] = run_off
        phrase = f"{run_off:.0%} of bootstrap resamples ran off"
        if run_off > RUN_OFF_UNCONSTRAINED:
            unconstrained.append(phrase)
        elif run_off > RUN_OFF_WEAK:
            weak.append(phrase)
        widths = {}
        for name in INTERVAL_NAMES:
            p = parameters[name]
            widths[name] = (p["high"] - p["low"]) / 2 / abs(p["value"]) if p["value"] else float("inf")
            phrase = f"{name} 95% interval +-{widths[name]:.0%}"
            if not widths[name] <= RELATIVE_WIDTH_UNCONSTRAINED:  # NaN: no finite resample
                unconstrained.append(phrase)
            elif widths[name] > RELATIVE_WIDTH_WEAK:
                weak.append(phrase)
        found["relative_half_widths"] = widths
        a = (parameters["a"]["high"] - parameters["a"]["low"]) / 2
        found["a_half_width"] = a
        if not a <= ALLOCATION_WIDTH_WEAK:
            weak.append(f"a 95% interval +-{a:.2f}")
    else:
        weak.append("no bootstrap: intervals not checked")

    theta = law.theta
    at_box = [name for name, out in zip(BOX_NAMES, outside_box(theta)[0]) if out]
    found["optimum_at_bound"] = at_box
    found["bounds"] = {name: list(bound) for name, bound in zip(BOX_NAMES, PARAMETER_BOX)}
    if at_box:
        unconstrained.append(f"optimum at a bound ({', '.join(at_box)})")
    if law.grid_box is not None:
        found["optimum_outside_grid"] = [name for name, value, (lo, hi) in zip(BOX_NAMES, theta, law.grid_box)
                                         if not lo < value < hi]
    if law.start_objectives is not None:
        best = law.objective
        found["starts_at_best"] = float(np.mean(law.start_objectives <= best + SAME_OPTIMUM * abs(best)))
    return found, unconstrained, weak


def check_design(runs, n_col="N") -> tuple[dict, list[str], list[str]]:
    """(findings, every warning, the severe ones) about the runs' sizes, budgets and settings."""
    from orchestrator import fmt

    warnings, severe = [], []
    N, D, loss = (runs[c].to_numpy(float) for c in (n_col, "D", "loss"))
    sizes, budgets = _levels(N), _levels(D)
    found = {"model_sizes": int(len(np.unique(sizes))), "token_budgets": int(len(np.unique(budgets))),
             "tokens_per_param": [float((D / N).min()), float((D / N).max())] if len(runs) else None}
    for count, noun in ((found["model_sizes"], "model size"), (found["token_budgets"], "token budget")):
        if count < MIN_LEVELS:
            severe.append(f"only {count} {noun}{'s' if count != 1 else ''}")

    slopes = []
    width = runs["hidden_dim"].to_numpy() if "hidden_dim" in runs else None
    for budget in np.unique(budgets):
        at = np.flatnonzero(budgets == budget)
        levels = np.unique(sizes[at])
        if len(levels) < 2:
            continue
        # seeds of one size at one budget: their mean
        mean = np.array([loss[at][sizes[at] == s].mean() for s in levels])
        worse = np.flatnonzero(np.diff(mean) > 0)
        slopes.append({"D": float(D[at].mean()), "falls_with_N": not len(worse)})
        if len(worse):
            small, big = (at[sizes[at] == levels[i]][0] for i in (worse[0], worse[0] + 1))
            if width is not None and pd.notna(width[big]) and pd.notna(width[small]):
                which = f"width {width[big]:g} vs {width[small]:g}"
            else:
                which = f"N={fmt.count(N[big])} vs {fmt.count(N[small])}"
            severe.append(f"at D={fmt.count(D[at].mean())}, the bigger model is worse ({which}): "
                          "data-limited or badly tuned")
    found["loss_vs_N_at_each_budget"] = slopes
    warnings += severe

    if "learning_rate" in runs and found["model_sizes"] > 1:
        rates = runs["learning_rate"].dropna().unique()
        found["learning_rates"] = [float(r) for r in rates]
        if len(rates) == 1 and runs["learning_rate"].notna().all():
            warnings.append("one learning rate used across sizes")
    return found, warnings, severe


def check_accounting(runs, law, n_col="N", budgets=()) -> tuple[dict, list[str]]:
    """(findings, warnings) about what N counts and where each run's loss was read."""
    found, warnings = {}, []
    names = runs["run"].astype(str).to_numpy() if "run" in runs else np.array([f"#{i}" for i in range(len(runs))])

    if {"N", "N_non_embedding"} <= set(runs.columns) and len(runs):
        total, non_embedding = runs["N"].to_numpy(float), runs["N_non_embedding"].to_numpy(float)
        difference = float(np.max(np.abs(total - non_embedding) / total))
        counts = {"max_relative_difference": difference, "threshold": COUNTS_DIFFER,
                  "differ": difference > COUNTS_DIFFER, "fits": None, "reason": None}
        if not counts["differ"]:
            counts["reason"] = f"the counts differ by at most {difference:.1%}: one fit serves both"
        elif law is None:
            counts["reason"] = "Approach 3 not fitted"
        else:
            other = "N_non_embedding" if n_col == "N" else "N"
            reason = chinchilla.check_design(runs[other], runs["D"])
            fits = {n_col: _summary(law, budgets)}
            if reason:
                counts["reason"] = f"not fitted with {other}: {reason}"
            else:
                fits[other] = _summary(_refit(law, runs, other), budgets)
            counts["fits"] = {"total" if col == "N" else "non_embedding": fit for col, fit in fits.items()}
    else:
        counts = {"reason": "no N_non_embedding column"}
    found["parameter_counts"] = counts

    planned = runs["optimizer_steps"].to_numpy(float) if "optimizer_steps" in runs else None
    if planned is not None and "warmup_steps" in runs:
        share = runs["warmup_steps"].to_numpy(float) / planned
        long = np.flatnonzero(share > WARMUP_SHARE)  # NaN (no warmup recorded) is not long
        found["warmup"] = {"threshold": WARMUP_SHARE, "runs": names[long].tolist(),
                           "max_share": float(np.nanmax(share)) if np.isfinite(share).any() else None}
        if len(long):
            warnings.append(f"warmup over {WARMUP_SHARE:.0%} of the planned steps in {_runs(len(long))} "
                            f"(up to {np.max(share[long]):.0%}): {_named(names[long])}")
    else:
        found["warmup"] = None  # not in the runs table (an older config, or a hand-built table)

    if planned is not None and "steps" in runs:
        steps = runs["steps"].to_numpy(float)
        early = np.flatnonzero(steps < planned)
        found["read_early"] = [{"run": names[i], "step": int(steps[i]), "planned": int(planned[i])} for i in early]
        if len(early):
            at = [f"{names[i]} at step {int(steps[i])} of {int(planned[i])}" for i in early]
            warnings.append(f"final loss read before the schedule ends in {_runs(len(early))}: {_named(at)}")
    else:
        found["read_early"] = None
    return found, warnings


def check_extrapolation(runs, law, n_col="N", budgets=()) -> tuple[dict, list[str]]:
    """(findings, warnings): the held-out largest size, and the budgets beyond the runs."""
    found, warnings = {}, []
    flops = runs["C"].to_numpy(float) if "C" in runs else 6.0 * runs["N"].to_numpy(float) * runs["D"].to_numpy(float)
    beyond = extrapolated(budgets, flops)
    found["largest_run_C"] = float(np.max(flops)) if len(flops) else None
    found["factor"] = EXTRAPOLATION_FACTOR
    found["budgets"] = [{"C": float(C), "extrapolated": bool(b)} for C, b in zip(budgets, beyond)]

    holdout = {"warn_above": HOLDOUT_ERROR_WARN}
    found["holdout"] = holdout
    if law is None:
        holdout["reason"] = "Approach 3 not fitted"
        return found, warnings
    N, D, loss = (runs[c].to_numpy(float) for c in (n_col, "D", "loss"))
    sizes = _levels(N)
    held = sizes == sizes.max()
    holdout.update(N=float(N[held].mean()), held_out_runs=int(held.sum()), fitted_runs=int((~held).sum()))
    reason = chinchilla.check_design(N[~held], D[~held])
    if reason:
        holdout["reason"] = f"without the largest size, {reason}"
        return found, warnings
    fit = _refit(law, runs[~held], n_col)
    error = fit.law.loss(N[held], D[held]) / loss[held] - 1.0
    holdout.update(reason=None, mean_abs_error=float(np.mean(np.abs(error))),
                   max_abs_error=float(np.max(np.abs(error))), mean_error=float(np.mean(error)))
    if not holdout["mean_abs_error"] <= HOLDOUT_ERROR_WARN:
        warnings.append(f"fitted without the largest size, the law misses its losses by "
                        f"{holdout['mean_abs_error']:.1%} on average ({holdout['mean_error']:+.1%} signed): "
                        "the law may not hold at the next scale")
    return found, warnings


def _refit(law, runs, n_col):
    """Approach 3 on ``runs`` without a bootstrap, started from ``law``'s optimum and REFIT_GRID."""
    starts = np.vstack([law.theta, REFIT_GRID])
    return chinchilla.fit_scaling_law(runs, n_col=n_col, bootstrap=0, grid=starts)


def _summary(law, budgets) -> dict:
    """The numbers a reader compares between two parameter counts."""
    fit = law.law
    return {"E": fit.E, "alpha": fit.alpha, "beta": fit.beta, "a": fit.a,
            "N_opt": [float(n) for n in np.atleast_1d(fit.n_opt(np.asarray(budgets, float)))]}


def _runs(n: int) -> str:
    return "1 run" if n == 1 else f"{n} runs"


def _named(items) -> str:
    items = list(items)
    listed = ", ".join(items[:MAX_NAMED])
    return listed + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def _levels(values) -> np.ndarray:
    """Each value's level: sorted values closer than SAME_LEVEL to the level's first are one."""
    order = np.argsort(values, kind="stable")
    levels = np.empty(len(values), int)
    level, first = -1, None
    for i in order:
        if first is None or values[i] > first * SAME_LEVEL:
            level, first = level + 1, values[i]
        levels[i] = level
    return levels
