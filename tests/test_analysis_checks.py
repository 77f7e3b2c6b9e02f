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


# ----------------------------------------------------------------- accounting
def with_runs(study, **columns) -> Study:
    return dataclasses.replace(study, runs=study.runs.assign(**columns))


def test_counts_more_than_5_percent_apart_get_a_fit_each_side_by_side(good):
    study, law = good
    # embeddings are a larger share of small models: 40% of the smallest, 5% of the largest
    kaplan = with_runs(study, N_non_embedding=lambda r: r["N"] * np.interp(np.log(r["N"]), np.log(SIZES[[0, -1]]),
                                                                            [0.6, 0.95]))
    review = checks.review(kaplan, law, budgets=[1e21, 1e22])
    counts = review.accounting["parameter_counts"]
    assert counts["differ"] and counts["max_relative_difference"] == pytest.approx(0.4)
    total, non_embedding = counts["fits"]["total"], counts["fits"]["non_embedding"]
    assert total["alpha"] == law.law.alpha and total["a"] == law.law.a
    assert len(total["N_opt"]) == len(non_embedding["N_opt"]) == 2
    assert non_embedding["alpha"] != pytest.approx(total["alpha"], rel=0.05)  # the count moves the exponent
    assert review.verdict == checks.WELL  # what N means is read, not held against the fit


def test_counts_within_5_percent_share_one_fit(good):
    study, law = good
    counts = checks.review(with_runs(study, N_non_embedding=study.runs["N"] * 0.97), law).accounting["parameter_counts"]
    assert not counts["differ"] and counts["fits"] is None
    assert counts["reason"] == "the counts differ by at most 3.0%: one fit serves both"


def test_a_warmup_of_20_percent_of_the_steps_is_a_warning(good):
    study, law = good
    long = np.where(study.runs.index < 2, 200, 50)  # two runs warm up for 200 of 1000 steps
    review = checks.review(with_runs(study, optimizer_steps=1000, steps=1000, warmup_steps=long), law)
    assert "warmup over 10% of the planned steps in 2 runs (up to 20%): r0, r1" in review.warnings
    assert review.accounting["warmup"]["runs"] == ["r0", "r1"]
    assert review.verdict == checks.WELL


def test_a_warmup_of_5_percent_is_not_a_warning(good):
    study, law = good
    review = checks.review(with_runs(study, optimizer_steps=1000, steps=1000, warmup_steps=50), law)
    assert review.warnings == []
    assert review.accounting["warmup"] == {"threshold": 0.1, "runs": [], "max_share": 0.05}
    assert review.accounting["read_early"] == []


def test_a_loss_read_before_the_last_planned_step_is_a_warning(good):
    study, law = good
    steps = np.where(study.runs.index == 3, 600, 1000)
    review = checks.review(with_runs(study, optimizer_steps=1000, steps=steps), law)
    assert "final loss read before the schedule ends in 1 run: r3 at step 600 of 1000" in review.warnings
    assert review.accounting["read_early"] == [{"run": "r3", "step": 600, "planned": 1000}]


def test_many_runs_read_early_are_named_up_to_five_and_counted():
    found, warnings = checks.check_accounting(pd.DataFrame({
        "run": [f"r{i}" for i in range(8)], "N": 1e8, "D": 1e9, "loss": 3.0, "steps": 10, "optimizer_steps": 20}), None)
    assert warnings[0].startswith("final loss read before the schedule ends in 8 runs: r0 at step 10 of 20, ")
    assert warnings[0].endswith("r4 at step 10 of 20 and 3 more")


# ----------------------------------------------------------------- extrapolation
def test_the_held_out_largest_size_is_predicted_within_a_few_percent(good):
    study, law = good
    holdout = checks.review(study, law).extrapolation["holdout"]
    assert holdout["N"] == pytest.approx(SIZES[-1]) and holdout["held_out_runs"] == 5 and holdout["fitted_runs"] == 25
    assert holdout["reason"] is None
    assert holdout["mean_abs_error"] < 0.03 and holdout["max_abs_error"] < 0.05
    assert abs(holdout["mean_error"]) <= holdout["mean_abs_error"]


def test_a_largest_size_that_breaks_the_law_is_missed_by_the_hold_out_and_warned():
    study = study_of(grid_design(SIZES, BUDGETS))
    study.runs.loc[study.runs["N"] == SIZES[-1], "loss"] *= 1.2
    review = reviewed(study, bootstrap=0)
    holdout = review.extrapolation["holdout"]
    assert holdout["mean_abs_error"] > checks.HOLDOUT_ERROR_WARN and holdout["mean_error"] < -0.1
    warning = next(w for w in review.warnings if w.startswith("fitted without the largest size"))
    assert f"by {holdout['mean_abs_error']:.1%} on average" in warning
    assert warning not in review.reasons  # a warning: the verdict says what the study measured


def test_the_hold_out_is_skipped_when_too_few_sizes_remain():
    review = reviewed(study_of(grid_design(SIZES[:3], BUDGETS)), bootstrap=0)
    assert review.extrapolation["holdout"]["reason"] == "without the largest size, fewer than 3 distinct model sizes"


def test_budgets_beyond_10x_the_largest_run_are_extrapolations(good):
    study, law = good
    top = float((6 * study.runs["N"] * study.runs["D"]).max())
    found = checks.review(study, law, budgets=[top, 10 * top, 11 * top]).extrapolation
    assert found["largest_run_C"] == top
    assert [b["extrapolated"] for b in found["budgets"]] == [False, False, True]


def test_analyze_prints_and_records_accounting_and_extrapolation(tmp_path, capsys):
    from orchestrator.cli import main

    # the synthetic trainer counts 90% of the parameters as non-embedding: 10% apart
    write_study(tmp_path, "grid", PAPER, grid_design(SIZES, BUDGETS), noise=0.01, steps=20)
    folder = tmp_path / "grid"
    assert main(["analyze", str(folder), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "accounting: total and non-embedding N up to 10.0% apart: L(N, D) under each below" in out
    assert "every final loss read at the end of its schedule" in out
    assert "extrapolation: fitted without the largest size (N=10G, 5 runs)" in out
    assert "L(N, D) under each parameter count" in out and "non-embedding N (Kaplan)" in out
    report = json.loads((folder / "analysis" / "report.json").read_text())
    top = max(run["C"] for run in report["data"]["runs"])
    assert "* extrapolated: beyond 10x the largest run's C" in out and f"{100 * top:.2e} *" in out
    assert f"{10 * top:.2e} *" not in out
    assert [p["extrapolated"] for p in report["approach3"]["predictions"]] == [False, False, True]
    checks_section = report["checks"]
    assert set(checks_section["accounting"]["parameter_counts"]["fits"]) == {"total", "non_embedding"}
    assert checks_section["extrapolation"]["holdout"]["mean_abs_error"] < 0.03
