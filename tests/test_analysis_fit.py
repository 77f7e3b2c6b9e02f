"""Approach 3: the batched fit recovers known laws, matches scipy, and its bootstrap covers the truth."""

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize, minimize_scalar

from analysis.chinchilla import (HUBER_DELTA, ChinchillaLaw, HuberLSE, allocation_arrays, check_design,
                                 fit_scaling_law, huber_lse, minimize_grid, paper_grid, predict_log,
                                 scipy_reference)
from analysis.lbfgs import minimize_batch

PAPER = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
OTHER = ChinchillaLaw(E=2.1, A=120.0, B=900.0, alpha=0.30, beta=0.36)


def design(law, sizes=8, budgets=10, noise=0.005, seed=0):
    """A few model sizes times several token budgets, log-normal noise on the loss."""
    N = np.repeat(np.geomspace(3e7, 1e10, sizes), budgets)
    D = np.tile(np.geomspace(1e9, 1e12, budgets), sizes)
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"N": N, "D": D, "loss": law.loss(N, D) * np.exp(rng.normal(0, noise, N.size))})


def test_paper_grid_is_the_papers_4500_starts():
    grid = paper_grid(2)
    assert grid.shape == (4500, 5)
    e, a, b, alpha, beta = grid.T
    assert sorted(set(alpha)) == sorted(set(beta)) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert sorted(set(e)) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert sorted(set(a)) == sorted(set(b)) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]


def _designs():
    """(name, logx, logy, uses the cell grid), one ``pytest.param`` per layout HuberLSE has."""
    grid = design(PAPER, sizes=6, budgets=7, noise=0.01)
    logx, logy = np.log(grid[["N", "D"]].to_numpy().T), np.log(grid["loss"].to_numpy())
    rng = np.random.default_rng(4)
    partial = np.sort(rng.choice(logy.size, 30, replace=False))  # 30 of 42 cells
    N = np.repeat(np.geomspace(1e7, 1e9, 5), 6)
    D = 1e19 / (6 * N) * np.exp(rng.normal(0, 0.3, 30))  # IsoFLOP-like: every D its own level
    scattered = np.log(np.stack([N, D])), np.log(PAPER.loss(N, D))
    repeated = np.hstack([logx, logx[:, :10]]), np.hstack([logy, logy[:10] + 0.01])  # seeds
    designs = [("full grid", logx, logy, True), ("partial grid", logx[:, partial], logy[partial], True),
               ("scattered", *scattered, False), ("repeated runs", *repeated, False),
               ("one term", logx[:1, ::7], logy[::7], True), ("one term, repeated", logx[:1], logy, False)]
    return [pytest.param(*d, id=d[0]) for d in designs]


@pytest.mark.parametrize("name, logx, logy, on_grid", _designs())
def test_objective_and_gradient_on_every_layout(name, logx, logy, on_grid):
    """The cell-grid and the gathered layouts give the plain per-point Huber sum and its gradient."""
    objective = HuberLSE(logx, logy)
    assert objective.grid == on_grid
    if name == "scattered":  # 5 sizes gathered from their levels, 30 token counts kept per point
        assert objective.index[0] is not None and objective.index[1] is None
    n_terms = logx.shape[0]
    theta = np.array([[0.4, 6.0, 5.5, 0.35, 0.3], [0.6, 5.0, 6.5, 0.3, 0.25]])
    theta = theta[:, [0, 1, 3]] if n_terms == 1 else theta
    weights = np.random.default_rng(1).integers(0, 3, (2, logy.size)).astype(float)
    for w in (None, weights):
        f, g = huber_lse(theta, logx, logy, w)
        for i, row in enumerate(theta):
            r = predict_log(row, logx) - logy
            huber = np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
            assert f[i] == pytest.approx(np.sum(huber * (1.0 if w is None else w[i])), rel=1e-12)
        step = 1e-6
        for j in range(theta.shape[1]):
            up, down = theta.copy(), theta.copy()
            up[:, j] += step
            down[:, j] -= step
            numeric = (huber_lse(up, logx, logy, w)[0] - huber_lse(down, logx, logy, w)[0]) / (2 * step)
            np.testing.assert_allclose(g[:, j], numeric, rtol=1e-5, atol=1e-10)


def test_batched_lbfgs_solves_many_rosenbrocks_like_scipy():
    shifts = np.linspace(0.5, 2.0, 7)

    def rosenbrock(x, rows):  # (c - x)^2 + 100 (y - x^2)^2, minimum at (c, c^2), c per problem
        c, u, v = shifts[rows], x[:, 0], x[:, 1]
        f = (c - u) ** 2 + 100 * (v - u ** 2) ** 2
        g = np.column_stack([-2 * (c - u) - 400 * u * (v - u ** 2), 200 * (v - u ** 2)])
        return f, g

    result = minimize_batch(rosenbrock, np.full((len(shifts), 2), -1.0), gtol=1e-9)
    assert result.converged.all()
    np.testing.assert_allclose(result.x[:, 0], shifts, rtol=1e-5)
    np.testing.assert_allclose(result.x[:, 1], shifts ** 2, rtol=1e-5)


def test_noise_free_data_gives_back_the_exact_law():
    data = design(OTHER, noise=0.0)
    fit = fit_scaling_law(data, bootstrap=0)
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit.law, name) == pytest.approx(getattr(OTHER, name), rel=1e-6), name
    assert fit.rms_log_residual < 1e-6


def test_the_paper_law_is_recovered_from_a_noisy_realistic_design_and_the_intervals_cover_it():
    fit = fit_scaling_law(design(PAPER, noise=0.005, seed=0), bootstrap=100, seed=0)
    law, params = fit.law, fit.parameters()
    assert law.E == pytest.approx(PAPER.E, rel=0.03)
    assert law.alpha == pytest.approx(PAPER.alpha, abs=0.03)
    assert law.beta == pytest.approx(PAPER.beta, abs=0.03)
    assert law.a == pytest.approx(PAPER.a, abs=0.02) and law.b == pytest.approx(PAPER.b, abs=0.02)
    assert abs(np.log(law.A / PAPER.A)) < 0.5 and abs(np.log(law.B / PAPER.B)) < 0.5
    for name in ("E", "A", "B", "alpha", "beta", "a", "b", "G"):
        p = params[name]
        assert p["low"] <= getattr(PAPER, name) <= p["high"], (name, p)
        assert p["low"] <= p["value"] <= p["high"], (name, p)
    # the noise is 0.5% and the fit's residuals say so
    assert 0.002 < fit.rms_log_residual < 0.008
    # the compute-optimal prediction at 1e24 FLOPs covers the true one
    row = fit.predict([1e24]).iloc[0]
    assert row["N_opt_low"] <= PAPER.n_opt(1e24) <= row["N_opt_high"]
    assert row["D_opt_low"] <= PAPER.d_opt(1e24) <= row["D_opt_high"]


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_truth_about_95_percent_of_the_time():
    hits, trials = {}, 20
    for seed in range(trials):
        params = fit_scaling_law(design(PAPER, sizes=6, budgets=8, noise=0.01, seed=seed),
                                 bootstrap=100, seed=seed).parameters()
        for name in ("E", "alpha", "beta", "a"):
            hits[name] = hits.get(name, 0) + (params[name]["low"] <= getattr(PAPER, name) <= params[name]["high"])
    assert all(count >= 16 for count in hits.values()), hits


def test_the_fit_is_deterministic():
    data = design(PAPER, noise=0.01, seed=3)
    first = fit_scaling_law(data, bootstrap=20, seed=5)
    second = fit_scaling_law(data, bootstrap=20, seed=5)
    assert first.law == second.law
    np.testing.assert_array_equal(first.samples, second.samples)


@pytest.mark.parametrize("layout", ["grid", "scattered"])
def test_batched_optimum_is_no_worse_than_a_per_start_scipy_loop(layout):
    data = design(PAPER, sizes=5, budgets=6, noise=0.01, seed=1)
    if layout == "scattered":  # every run its own token count: the gathered layout
        data["D"] *= np.exp(np.random.default_rng(2).normal(0, 0.2, len(data)))
    logx, logy = np.log(data[["N", "D"]].to_numpy().T), np.log(data["loss"].to_numpy())
    assert HuberLSE(logx, logy).grid == (layout == "grid")
    small_grid = paper_grid(2)[::90]  # 50 starts spread over the paper's grid
    ours = minimize_grid(logx, logy, small_grid)
    theta, objective = scipy_reference(logx, logy, small_grid)
    assert ours.objective <= objective * (1 + 1e-9)
    np.testing.assert_allclose(ours.theta, theta, rtol=1e-4, atol=1e-5)


def test_allocation_matches_a_numerical_minimisation_at_fixed_compute():
    for C in (1e20, 1e23):
        # minimise L(N, C / 6N) over log N directly
        best = minimize_scalar(lambda logn: PAPER.loss(np.exp(logn), C / (6 * np.exp(logn))),
                               bounds=(10, 40), method="bounded", options={"xatol": 1e-10})
        assert PAPER.n_opt(C) == pytest.approx(np.exp(best.x), rel=1e-4)
        assert 6 * PAPER.n_opt(C) * PAPER.d_opt(C) == pytest.approx(C, rel=1e-12)
        assert PAPER.tokens_per_param(C) == pytest.approx(PAPER.d_opt(C) / PAPER.n_opt(C))
    # the paper's exponents: a = 0.28 / 0.62, b = 0.34 / 0.62
    assert PAPER.a == pytest.approx(0.4516, abs=1e-4) and PAPER.b == pytest.approx(0.5484, abs=1e-4)
    rows = allocation_arrays(np.array([[PAPER.E, PAPER.A, PAPER.B, PAPER.alpha, PAPER.beta]]), [1e21])
    assert rows["N_opt"][0, 0] == pytest.approx(PAPER.n_opt(1e21))
    assert rows["loss_opt"][0, 0] == pytest.approx(PAPER.loss_opt(1e21))


@pytest.mark.parametrize("N, D, reason", [
    (np.geomspace(1e7, 1e9, 12), 20 * np.geomspace(1e7, 1e9, 12), "tokens-per-parameter"),
    (np.repeat([1e7, 1e8, 1e9], 4), np.full(12, 1e10), "one token budget"),
    (np.geomspace(1e7, 1e9, 6), np.geomspace(1e9, 1e11, 6), "only 6 runs"),
])
def test_designs_that_cannot_identify_the_law_are_refused_with_the_reason(N, D, reason):
    assert reason in check_design(N, D)
    with pytest.raises(ValueError, match=reason):
        fit_scaling_law(pd.DataFrame({"N": N, "D": D, "loss": 2.0 + 0 * N}), bootstrap=0)


def test_scipy_reference_and_batched_objective_agree_on_one_point():
    data = design(PAPER, sizes=4, budgets=4, noise=0.01)
    logx, logy = np.log(data[["N", "D"]].to_numpy().T), np.log(data["loss"].to_numpy())
    start = np.array([[0.5, 6.0, 6.0, 0.3, 0.3]])
    theta, objective = scipy_reference(logx, logy, start)
    assert huber_lse(theta[None], logx, logy)[0][0] == pytest.approx(objective, rel=1e-12)
    plain = minimize(lambda t: huber_lse(t[None], logx, logy)[0][0], start[0], method="Nelder-Mead",
                     options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})
    assert objective <= plain.fun * (1 + 1e-6)
