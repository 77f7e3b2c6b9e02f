"""One analysis of a study: every fit that its design allows, as an object and as JSON.

``analyze(study)`` runs Approach 3 (with its bootstrap and the compute-optimal
predictions), Approaches 1 and 2, L(N) and L(C), catching nothing but design limits:
an approach that does not apply is recorded with its reason. ``checks.review`` then says
how far the Approach 3 fit can be trusted and how far it carries (the "checks" section;
each prediction also says whether its budget is an extrapolation). ``Analysis.write(out_dir)``
writes ``report.json`` and the plots; the JSON holds the parameters, their intervals,
the runs used and left out, and the settings, so a result can be traced and re-run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import approaches, checks
from analysis.chinchilla import ScalingLawFit, check_design, fit_scaling_law
from analysis.loader import Study

REPORT_NAME = "report.json"


@dataclasses.dataclass
class Analysis:
    study: Study
    budgets: list[float]
    law: ScalingLawFit | None
    law_reason: str | None  # why Approach 3 was not fitted
    predictions: pd.DataFrame | None
    approach1: approaches.Allocation
    approach2: approaches.Allocation
    size_laws: list[approaches.SaturatingLaw]
    compute_law: approaches.SaturatingLaw
    settings: dict
    review: checks.Review  # how far to trust Approach 3, and why

    def to_dict(self) -> dict:
        runs = self.study.runs
        approach3 = {"applicable": self.law is not None, "reason": self.law_reason}
        if self.law is not None:
            approach3.update(
                parameters=self.law.parameters(), objective=self.law.objective,
                rms_log_residual=self.law.rms_log_residual, n_points=self.law.n_points,
                starts=self.law.n_starts, starts_converged=self.law.n_converged,
                settings=self.law.settings,
                predictions=self.predictions.to_dict(orient="records"))
        used_columns = [c for c in ("run", "state", "N", "N_non_embedding", "D", "C", "loss", "loss_source",
                                    "steps", "optimizer_steps", "warmup_steps") if c in runs]
        return _clean({
            "settings": self.settings,
            "data": {
                "runs_used": len(runs),
                "loss_sources": runs["loss_source"].value_counts().to_dict() if len(runs) else {},
                "runs": runs[used_columns].to_dict(orient="records"),
                "excluded": self.study.excluded.to_dict(orient="records"),
                "problems": self.study.problems.to_dict(orient="records"),
            },
            "approach3": approach3,
            "approach1": self.approach1.to_dict(),
            "approach2": self.approach2.to_dict(),
            "loss_vs_size": [f.to_dict() for f in self.size_laws],
            "loss_vs_compute": self.compute_law.to_dict(),
            "checks": self.review.to_dict(),
        })

    def write(self, out_dir) -> list[Path]:
        """Write report.json and the plots into ``out_dir``; returns the paths written."""
        import json

        from analysis import plots
        from orchestrator.paths import atomic_write_text

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        report = out_dir / REPORT_NAME
        atomic_write_text(report, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return [report] + plots.draw_all(self, out_dir)


def analyze(study: Study, *, budgets=None, bootstrap=200, seed=0, params="total") -> Analysis:
    """Fit everything the study's design allows.

    ``budgets``: FLOP budgets for the compute-optimal predictions (default: the largest
    budget in the study, and 10x and 100x beyond it). ``params``: "total" or
    "non_embedding" parameters as N in L(N, D) and L(N); the allocation then reads C as
    6 x that N x D. Approaches 1 and 2 always use total parameters (the trainer's C).
    """
    runs = study.runs
    if params not in ("total", "non_embedding"):
        raise ValueError(f"params must be 'total' or 'non_embedding', got {params!r}")
    n_col = "N" if params == "total" else "N_non_embedding"
    if budgets is None or len(budgets) == 0:
        top = float(runs["C"].max()) if len(runs) else 1e21
        budgets = [top, 10 * top, 100 * top]
    budgets = [float(b) for b in budgets]

    law, reason, predictions = None, None, None
    if len(runs):
        reason = check_design(runs[n_col], runs["D"])
    else:
        reason = "no usable runs"
    if reason is None:
        law = fit_scaling_law(runs, n_col=n_col, bootstrap=bootstrap, seed=seed)
        predictions = law.predict(budgets)
        predictions["extrapolated"] = checks.extrapolated(budgets, runs["C"])

    approach1 = approaches.approach1(runs, study.curves)  # its points are the loss frontier
    return Analysis(
        study=study, budgets=budgets, law=law, law_reason=reason, predictions=predictions,
        approach1=approach1, approach2=approaches.approach2(runs),
        size_laws=approaches.loss_vs_size(runs, n_col=n_col),
        compute_law=approaches.loss_vs_compute(runs, approach1.points) if len(runs) else
        approaches.SaturatingLaw("C", "L(C)", reason="no usable runs"),
        review=checks.review(study, law, n_col=n_col, law_reason=reason, budgets=budgets),
        settings={"budgets": budgets, "bootstrap": int(bootstrap), "seed": int(seed), "params": params,
                  "loss": "final validation loss, else mean training loss of the last 10% of steps",
                  "flops": "C = 6 * total_params * tokens"})


def _clean(value):
    """JSON-safe: NaN and inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is pd.NA or value is None:
        return None
    return value
