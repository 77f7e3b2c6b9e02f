"""The fit says when its answer is weak: identifiability and design checks, and the verdict."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import checks
from analysis.chinchilla import ChinchillaLaw, check_design, fit_scaling_law
from analysis.loader import Study
from analysis.synthetic import grid_design, write_study

PAPER = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
SIZES = np.geomspace(3e7, 1e10, 6)
BUDGETS = np.geomspace(1e9, 1e12, 5)
REPO = Path(__file__).resolve().parents[1]


def study_of(pairs, noise=0.01, seed=0, **columns) -> Study:
    """A Study whose runs table holds the law's losses at ``pairs`` (N, D), log-normal noise."""
    N, D = np.array(pairs, float).T
    rng = np.random.default_rng(seed)
    runs = pd.DataFrame({"run": [f"r{i}" for i in range(len(N))], "N": N, "D": D,
                         "loss": PAPER.loss(N, D) * np.exp(rng.normal(0, noise, N.size)), **columns})
    empty = pd.DataFrame()
    return Study(runs=runs, curves=empty, excluded=empty, problems=empty)


def reviewed(study, bootstrap=50) -> checks.Review:
    """Fit like ``analyze`` does (refusing what check_design refuses) and review the result."""
    runs = study.runs
    reason = check_design(runs["N"], runs["D"])
    law = None if reason else fit_scaling_law(runs, bootstrap=bootstrap)
    return checks.review(study, law, law_reason=reason)


@pytest.fixture(scope="module")
def good():
    study = study_of(grid_design(SIZES, BUDGETS))
    return study, fit_scaling_law(study.runs, bootstrap=50)


def test_a_full_grid_from_the_known_law_is_well_constrained(good):
    study, law = good
    review = checks.review(study, law)
    assert review.verdict == checks.WELL
    assert review.reasons == [] and review.warnings == []
    assert review.line == "well constrained"
    found = review.identifiability
    assert found["run_off_share"] == 0.0
    assert found["optimum_at_bound"] == [] and found["optimum_outside_grid"] == []
    assert 0 < found["starts_at_best"] <= 1
    assert review.design["model_sizes"] == 6 and review.design["token_budgets"] == 5
    assert all(s["falls_with_N"] for s in review.design["loss_vs_N_at_each_budget"])


def test_resamples_that_run_off_are_counted_and_make_the_fit_unconstrained(good):
    study, law = good
    samples = law.samples.copy()
    samples[:10, 1] = np.inf  # A -> inf: the power term ran away
    samples[10:12, 3] = 5.0  # alpha past the box
    review = checks.review(study, dataclasses.replace(law, samples=samples))
    assert review.identifiability["run_off_share"] == pytest.approx(12 / 50)
    assert review.verdict == checks.UNCONSTRAINED
    assert "24% of bootstrap resamples ran off" in review.reasons


def test_a_few_run_offs_make_the_fit_weakly_constrained(good):
    study, law = good
    samples = law.samples.copy()
    samples[:4, 0] = 1e-6  # E -> 0
    review = checks.review(study, dataclasses.replace(law, samples=samples))
    assert review.verdict == checks.WEAK
    assert "8% of bootstrap resamples ran off" in review.reasons


def test_an_optimum_at_a_bound_is_unconstrained(good):
    study, law = good
    stuck = dataclasses.replace(law, law=dataclasses.replace(law.law, E=1e-5))
    review = checks.review(study, stuck)
    assert review.verdict == checks.UNCONSTRAINED
    assert "optimum at a bound (E)" in review.reasons


def test_a_wide_interval_of_an_exponent_is_named_with_its_width(good):
    study, law = good
    samples = law.samples.copy()
    samples[:, 4] = np.linspace(0.1, 0.46, len(samples))  # beta about 0.28 +- 0.18
    review = checks.review(study, dataclasses.replace(law, samples=samples))
    width = review.identifiability["relative_half_widths"]["beta"]
    assert 0.5 < width < 1.0
    assert review.verdict == checks.WEAK
    assert f"beta 95% interval +-{width:.0%}" in review.reasons


def test_two_model_sizes_only_is_flagged():
    review = reviewed(study_of(grid_design(SIZES[[0, -1]], BUDGETS)))
    assert review.design["model_sizes"] == 2
    assert review.verdict == checks.UNCONSTRAINED  # Approach 3 refuses the design
    assert "only 2 model sizes" in review.reasons


def test_one_token_budget_only_is_flagged():
    review = reviewed(study_of(grid_design(SIZES, BUDGETS[:1])))
    assert review.design["token_budgets"] == 1
    assert "only 1 token budget" in review.reasons


def test_a_budget_where_the_bigger_model_is_worse_is_flagged_and_weakens_the_verdict():
    study = study_of(grid_design(SIZES, BUDGETS), hidden_dim=np.repeat([16, 24, 32, 48, 64, 96], 5))
    runs = study.runs
    smallest_budget = runs["D"] == BUDGETS[0]
    bigger = smallest_budget & (runs["hidden_dim"] == 32)
    runs.loc[bigger, "loss"] = runs.loc[smallest_budget & (runs["hidden_dim"] == 24), "loss"].iloc[0] * 1.05
    review = reviewed(study)
    message = "at D=1G, the bigger model is worse (width 32 vs 24): data-limited or badly tuned"
    assert message in review.warnings and message in review.reasons
    assert review.verdict != checks.WELL
    slopes = review.design["loss_vs_N_at_each_budget"]
    assert [s["falls_with_N"] for s in slopes] == [False, True, True, True, True]


def test_budgets_match_despite_batch_rounding():
    D = np.tile(BUDGETS, 6) * np.repeat([1.0, 1.004, 0.997, 1.0, 1.002, 0.999], 5)
    found, _, _ = checks.check_design(study_of(list(zip(np.repeat(SIZES, 5), D))).runs)
    assert found["token_budgets"] == 5


def test_one_learning_rate_across_sizes_is_a_warning(good):
    study, law = good
    same = dataclasses.replace(study, runs=study.runs.assign(learning_rate=1e-3))
    review = checks.review(same, law)
    assert "one learning rate used across sizes" in review.warnings
    assert review.verdict == checks.WELL  # a warning to read, not a reason against the fit
    tuned = dataclasses.replace(study, runs=study.runs.assign(learning_rate=np.repeat(np.geomspace(3e-3, 3e-4, 6), 5)))
    assert "one learning rate used across sizes" not in checks.review(tuned, law).warnings


def test_nearly_collinear_n_and_d_run_off():
    # two tokens-per-parameter ratios: N and D barely separate, so the terms trade off
    pairs = [(n, n * 20 * r) for n in np.geomspace(1e8, 1e10, 8) for r in (1, 2)]
    review = reviewed(study_of(pairs, noise=0.02))
    assert review.verdict in (checks.WEAK, checks.UNCONSTRAINED)
    assert review.identifiability["run_off_share"] > checks.RUN_OFF_WEAK
    assert any(r.endswith("of bootstrap resamples ran off") for r in review.reasons)


def test_a_single_tokens_per_parameter_ratio_is_not_fitted_and_unconstrained():
    review = reviewed(study_of([(n, 20 * n) for n in np.geomspace(1e8, 1e10, 12)]))
    assert review.verdict == checks.UNCONSTRAINED and review.identifiability is None
    assert review.reasons[0].startswith("not fitted: model size and token count move together")


def test_analyze_prints_the_verdict_above_the_table_and_writes_the_checks(tmp_path):
    write_study(tmp_path, "grid", PAPER, grid_design(SIZES, BUDGETS), noise=0.01, steps=20)
    folder = tmp_path / "grid"
    done = subprocess.run([sys.executable, "-m", "orchestrator", "analyze", str(folder), "--bootstrap", "50"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\nwell constrained\n" in out
    assert out.index("well constrained") < out.index("L(N, D) = E + A / N^alpha")
    assert "of 50 bootstrap resamples ran off" in out and "6 model sizes x 5 token budgets" in out
    report = json.loads((folder / "analysis" / "report.json").read_text())
    assert report["checks"]["verdict"] == "well constrained"
    assert report["checks"]["identifiability"]["run_off_share"] == 0.0
    assert report["checks"]["design"]["model_sizes"] == 6


def test_analyze_prints_a_weak_verdict_with_its_reasons(tmp_path, capsys):
    from orchestrator.cli import main

    write_study(tmp_path, "two", PAPER, grid_design(SIZES[[0, -1]], BUDGETS), steps=20)
    assert main(["analyze", str(tmp_path / "two"), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "unconstrained: only 2 model sizes" in out
    report = json.loads((tmp_path / "two" / "analysis" / "report.json").read_text())
    assert report["checks"]["reasons"] == ["only 2 model sizes"]
