"""Approaches 1 and 2, L(N) and L(C): recover known allocations, and say why when they cannot."""

import numpy as np
import pandas as pd
import pytest

from analysis.approaches import (approach1, approach2, envelope, fit_saturating, group_by_budget,
                                 loss_vs_compute, loss_vs_size)
from analysis.chinchilla import ChinchillaLaw
from analysis.loader import load_folder
from analysis.synthetic import grid_design, isoflop_design, write_study

PAPER = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def runs_table(pairs, law=PAPER, noise=0.0, seed=0):
    N, D = np.array(pairs).T
    loss = law.loss(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, N.size))
    return pd.DataFrame({"run": [f"r{i}" for i in range(N.size)], "N": N, "D": D, "C": 6 * N * D, "loss": loss})


def test_isoflop_profiles_recover_the_allocation_exponents():
    budgets = np.geomspace(1e19, 1e22, 5)
    result = approach2(runs_table(isoflop_design(budgets, 9, law=PAPER), noise=0.002))
    assert result.reason is None and len(result.points) == 5
    assert result.n_opt.exponent == pytest.approx(PAPER.a, abs=0.02)
    assert result.d_opt.exponent == pytest.approx(PAPER.b, abs=0.02)
    np.testing.assert_allclose(result.points["N_opt"], PAPER.n_opt(result.points["C"]), rtol=0.15)


def test_isoflop_needs_budgets_with_three_sizes_and_says_so():
    # a fixed 20 tokens per parameter: every run has its own FLOP budget
    sizes = np.geomspace(1e7, 1e9, 6)
    result = approach2(runs_table([(n, 20 * n) for n in sizes]))
    assert result.reason.startswith("0 FLOP budget(s) with 3+ model sizes")
    assert result.n_opt is None


def test_a_profile_whose_minimum_lies_outside_the_sizes_tried_is_not_used():
    C = 1e21
    too_small = [(n, C / (6 * n)) for n in np.geomspace(PAPER.n_opt(C) / 100, PAPER.n_opt(C) / 10, 4)]
    result = approach2(runs_table(too_small + isoflop_design([1e19, 1e20], 5, law=PAPER)))
    reasons = [p.get("reason") for p in result.profiles]
    assert "minimum outside the model sizes tried" in reasons
    assert result.reason is None and len(result.points) == 2


def test_the_training_curve_envelope_recovers_the_allocation(tmp_path):
    sizes = np.geomspace(1e8, 1e10, 12)
    write_study(tmp_path, "env", PAPER, [(n, 1e12) for n in sizes], noise=0.0, steps=200)
    study = load_folder(tmp_path / "env")
    result = approach1(study.runs, study.curves)
    assert result.reason is None
    assert result.n_opt.exponent == pytest.approx(PAPER.a, abs=0.05)
    assert result.d_opt.exponent == pytest.approx(PAPER.b, abs=0.05)
    # along the envelope, each winner is the size closest to the true optimum (a 1.5x grid)
    middle = result.points.iloc[len(result.points) // 2]
    assert middle["N_opt"] == pytest.approx(PAPER.n_opt(middle["C"]), rel=0.6)


def test_the_envelope_needs_three_winning_sizes(tmp_path):
    write_study(tmp_path, "two", PAPER, [(1e8, 1e10), (1e9, 1e11)], noise=0.0)
    study = load_folder(tmp_path / "two")
    result = approach1(study.runs, study.curves)
    assert "won by only 2 model size(s)" in result.reason
    assert "no training curves" in approach1(study.runs, study.curves.iloc[0:0]).reason


def test_loss_vs_size_recovers_a_one_budget_study():
    law = ChinchillaLaw(E=2.0, A=300.0, B=0.0, alpha=0.3, beta=0.3)
    runs = runs_table([(n, 1e10) for n in np.geomspace(1e6, 1e10, 9)], law=law, noise=0.0)
    (fit,) = loss_vs_size(runs)
    assert fit.reason is None and fit.label == "L(N) at D = 1e+10 tokens"
    assert (fit.E, fit.A, fit.alpha) == pytest.approx((2.0, 300.0, 0.3), rel=1e-3)


def test_loss_vs_size_says_why_it_was_not_fitted():
    runs = runs_table([(n, 20 * n) for n in np.geomspace(1e7, 1e9, 6)])
    (fit,) = loss_vs_size(runs)
    assert "no token budget is shared" in fit.reason


def test_loss_vs_compute_fits_the_final_loss_frontier_without_curves():
    runs = runs_table([(n, 20 * n) for n in np.geomspace(1e7, 1e10, 8)], noise=0.0)
    fit = loss_vs_compute(runs, pd.DataFrame())
    assert fit.reason is None and fit.label == "L(C) on the final-loss frontier"
    np.testing.assert_allclose(fit(runs["C"]), runs["loss"], rtol=0.01)


def test_saturating_fit_needs_enough_points():
    assert "need 3+" in fit_saturating([1e6, 1e7], [3.0, 2.5], "N", "L(N)").reason


def test_budgets_that_differ_by_rounding_are_one_group():
    groups = group_by_budget([1e20, 1.01e20, 0.995e20, 3e20, 3.02e20, 1e21])
    assert groups.tolist() == [0, 0, 0, 1, 1, 2]


def test_envelope_only_lets_a_run_compete_within_its_own_curve(tmp_path):
    write_study(tmp_path, "e", PAPER, grid_design([1e8, 1e9], [1e10]), noise=0.0)
    study = load_folder(tmp_path / "e")
    points = envelope(study.runs, study.curves)
    assert points["C"].min() == pytest.approx(study.runs["C"].min())
    assert points["C"].max() == pytest.approx(study.runs["C"].max())
    last = points.iloc[-1]
    assert last["N_opt"] == 1e9  # only the large run reaches the largest budget
