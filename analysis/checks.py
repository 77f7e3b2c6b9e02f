"""What a careful reviewer asks of a fit before believing it, and the verdict.

A fit always returns numbers; these checks say whether the study could have told them
apart. ``review(study, law)`` looks at two things:

- identifiability, from the fit and its bootstrap: how many resamples ran off (a
  parameter outside ``chinchilla.PARAMETER_BOX``, or not finite), how wide the 95%
  intervals of E, alpha, beta and the allocation exponent a are, how many grid starts
  reach the best objective, and whether the optimum itself sits at the box's edge or
  outside the grid of starts;
- the design: how many model sizes and token budgets, the spread of D/N, whether a
  bigger model ever loses at a fixed budget, and whether one learning rate served every size.

The verdict is "unconstrained" when the fit measures nothing (many run-offs, an interval
past +-100%, an optimum at the box), "weakly constrained" when it measures something
loosely or on a thin design, else "well constrained". It is a pure function of the
runs table and the fit, so a test can build either directly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

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


@dataclasses.dataclass
class Review:
    verdict: str  # WELL, WEAK or UNCONSTRAINED
    reasons: list[str]  # why not WELL, each a short phrase with its number
    identifiability: dict | None  # None when Approach 3 was not fitted
    design: dict
    warnings: list[str]  # every design finding, severe or not

    @property
    def line(self) -> str:
        """The verdict as one line: 'weakly constrained: <reason>; <reason>'."""
        return self.verdict + (": " + "; ".join(self.reasons) if self.reasons else "")

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "line": self.line, "reasons": self.reasons,
                "identifiability": self.identifiability, "design": self.design,
                "warnings": self.warnings}


def review(study, law, *, n_col="N", law_reason=None) -> Review:
    """Check the fit ``law`` (a ScalingLawFit, or None with ``law_reason``) of ``study``."""
    design, warnings, severe = check_design(study.runs, n_col)
    if law is None:
        counts = [w for w in severe if w.startswith("only ")]
        reasons = (counts or [f"not fitted: {law_reason or 'no fit'}"]) + [w for w in severe if w not in counts]
        return Review(UNCONSTRAINED, reasons, None, design, warnings)
    identifiability, unconstrained, weak = check_identifiability(law)
    if unconstrained:
        verdict = UNCONSTRAINED
    elif weak or severe:
        verdict = WEAK
    else:
        verdict = WELL
    return Review(verdict, unconstrained + weak + severe, identifiability, design, warnings)


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
