"""The plots say what the report says: bands that survive run-off resamples, fitted curves kept
near the data and below a uniform guess, extrapolation marked, and every mark labelled."""

import dataclasses
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PolyCollection

from analysis import plots
from analysis.approaches import SMOOTH_WINDOW
from analysis.chinchilla import ChinchillaLaw
from analysis.loader import load_folder
from analysis.report import analyze
from analysis.synthetic import grid_design, write_study

# a byte-level study of small models: the first logged losses sit near ln 256
LAW = ChinchillaLaw(E=0.9, A=60.0, B=200.0, alpha=0.3, beta=0.3)
SIZES = np.geomspace(2e5, 2e7, 5)
TOKENS = np.geomspace(5e7, 5e9, 5)


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    write_study(root, "bytes", LAW, grid_design(SIZES, TOKENS), noise=0.01, steps=40)
    return analyze(load_folder(root / "bytes"), bootstrap=20)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def with_run_offs(analysis, count):
    """The analysis with ``count`` resamples at beta = 0: G = inf, so N_opt = inf and D_opt = 0."""
    samples = analysis.law.samples.copy()
    samples[:count, 4] = 0.0
    law = dataclasses.replace(analysis.law, samples=samples)
    return dataclasses.replace(analysis, law=law, predictions=law.predict(analysis.budgets))


def with_budgets(analysis, budgets):
    return dataclasses.replace(analysis, budgets=list(budgets), predictions=analysis.law.predict(budgets))


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def band(ax) -> PolyCollection:
    (found,) = [c for c in ax.collections if isinstance(c, PolyCollection)
                and "bootstrap interval" in c.get_label()]
    return found


def line(ax, prefix):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(prefix)]
    return found


def test_n_opt_band_is_drawn_when_some_resamples_run_off_to_infinity(analysis):
    fig = plots.compute_optimal(with_run_offs(analysis, 3))
    poly = band(fig.axes[0])
    vertices = np.concatenate([path.vertices for path in poly.get_paths()])
    assert len(vertices) > 100 and np.isfinite(vertices).all()
    assert "15.0% of 20 resamples dropped: N_opt not finite" in poly.get_label()
    assert any("15.0% of 20 resamples dropped" in text for text in legend_texts(fig.axes[0]))


def test_the_band_at_each_budget_is_the_printed_interval(analysis):
    broken = with_run_offs(analysis, 3)
    fig = plots.compute_optimal(broken)
    vertices = np.concatenate([path.vertices for path in band(fig.axes[0]).get_paths()])
    for row in broken.predictions.itertuples():
        at = vertices[np.isclose(vertices[:, 0], row.C, rtol=1e-12)]
        assert at[:, 1].min() == pytest.approx(row.N_opt_low, rel=1e-9)
        assert at[:, 1].max() == pytest.approx(row.N_opt_high, rel=1e-9)


def test_a_d_opt_band_down_to_zero_runs_off_the_axis_and_is_named(analysis):
    fig = plots.compute_optimal(with_run_offs(analysis, 3))
    ax = fig.axes[1]
    poly = band(ax)
    vertices = np.concatenate([path.vertices for path in poly.get_paths()])
    assert np.isfinite(vertices).all() and vertices[:, 1].min() < ax.get_ylim()[0]
    assert "down to D_opt = 0" in poly.get_label()


def test_d_opt_below_the_fewest_tokens_trained_is_hatched(analysis):
    ax = plots.compute_optimal(analysis).axes[1]
    assert LAW.d_opt(analysis.study.runs["C"].min()) < TOKENS.min()  # the premise: the curve dips below
    (hatched,) = [p for p in ax.patches if p.get_hatch()]
    assert "fewer tokens than any run trained" in hatched.get_label()
    ys = hatched.get_path().transformed(hatched.get_patch_transform()).vertices[:, 1]
    assert ys.max() == pytest.approx(analysis.study.runs["D"].min())


def test_d_opt_above_every_run_trained_has_no_hatch(analysis):
    fit = analysis.law
    # B x 100 moves D_opt up ~2000x: every C then asks for more tokens than any run had
    more_data = dataclasses.replace(fit, law=dataclasses.replace(fit.law, B=fit.law.B * 100),
                                    samples=np.empty((0, 5)))
    ax = plots.compute_optimal(dataclasses.replace(analysis, law=more_data)).axes[1]
    assert not [p for p in ax.patches if p.get_hatch()]


def test_extrapolation_is_shaded_only_when_a_budget_is_beyond_ten_times_the_largest_run(analysis):
    top = float(analysis.study.runs["C"].max())
    for budgets, shaded in (([top, 5 * top], False), ([top, 10 * top], False), ([top, 100 * top], True)):
        fig = plots.compute_optimal(with_budgets(analysis, budgets))
        for ax in fig.axes:
            assert ("extrapolation (> 10x the largest run)" in legend_texts(ax)) is shaded, budgets
        if shaded:
            (span,) = [p for p in fig.axes[0].patches if p.get_label().startswith("extrapolation")]
            xs = span.get_path().transformed(span.get_patch_transform()).vertices[:, 0]
            assert xs.min() == pytest.approx(10 * top)
        plt.close(fig)


def test_l_of_c_stays_within_a_decade_of_the_data_and_below_ln_256(analysis):
    runs = analysis.study.runs
    ax = plots.loss_vs_flops(analysis).axes[0]
    for prefix in ("fitted L(C)", "Approach 3"):
        x, y = line(ax, prefix).get_data()
        assert x.min() >= runs["C"].min() and x.max() <= 10 * runs["C"].max() * (1 + 1e-12)
        assert x.max() == pytest.approx(10 * runs["C"].max())  # the whole decade, no more
        assert np.isfinite(y).all() and y.max() <= math.log(256)
    assert line(ax, "uniform guess").get_ydata()[0] == pytest.approx(math.log(256))


def test_fitted_curves_are_cut_at_the_uniform_loss_of_the_runs_vocabulary(analysis):
    runs = analysis.study.runs.assign(vocab_size=16)  # ln 16 = 2.77: below the small runs' losses
    study = dataclasses.replace(analysis.study, runs=runs)
    ax = plots.loss_vs_flops(dataclasses.replace(analysis, study=study)).axes[0]
    for prefix in ("fitted L(C)", "Approach 3"):
        x, y = line(ax, prefix).get_data()
        assert y.max() <= math.log(16)
        assert x.min() > runs["C"].min()  # the premise: something was cut
    assert "uniform guess: ln 16 = 2.77" in legend_texts(ax)


def test_the_frontier_is_the_minimum_over_n_of_the_fitted_law_and_below_every_fitted_run(analysis):
    law, runs, curves = analysis.law.law, analysis.study.runs, analysis.study.curves
    C, frontier = line(plots.loss_vs_flops(analysis).axes[0], "Approach 3").get_data()
    # min over N of L(N, C/6N), by brute force on a fine grid around the closed-form optimum
    N = law.n_opt(C)[:, None] * np.geomspace(1e-2, 1e2, 4001)[None, :]
    assert frontier == pytest.approx(law.loss(N, C[:, None] / (6 * N)).min(axis=1), rel=1e-6)
    # every logged point of every run is one allocation of its C: the fitted law there is on
    # or above the frontier (the observed curves scatter around the fit, so the claim is the fit's)
    size = runs.set_index("run")["N"]
    inside = (curves["flops"] >= C.min()) & (curves["flops"] <= C.max())
    logged = curves[inside]
    fitted = law.loss(size[logged["run"]].to_numpy(), logged["tokens"].to_numpy())
    at = np.exp(np.interp(np.log(logged["flops"]), np.log(C), np.log(frontier)))
    assert inside.sum() > 100 and (fitted >= at * (1 - 1e-4)).all()
    # the final losses scatter around the fit: none lies below the frontier by more than 4 residual RMS
    at_runs = np.exp(np.interp(np.log(runs["C"]), np.log(C), np.log(frontier)))
    assert (np.log(runs["loss"]) - np.log(at_runs) >= -4 * analysis.law.rms_log_residual).all()


def test_loss_vs_flops_says_what_the_dots_and_the_lines_are(analysis):
    ax = plots.loss_vs_flops(analysis).axes[0]
    texts = legend_texts(ax)
    assert "final validation loss of each run" in texts
    assert f"training loss of each run (rolling mean of {SMOOTH_WINDOW} logged steps)" in texts
    (curves,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    first = analysis.study.curves.groupby("run", sort=False).get_group(analysis.study.runs["run"].iloc[0])
    raw = first["loss"].to_numpy()
    drawn = [s for s in curves.get_segments() if len(s) == len(raw) and s[0, 0] == first["flops"].iloc[0]]
    assert drawn and np.allclose(drawn[0][:, 1], first["loss"].rolling(SMOOTH_WINDOW, min_periods=1).mean())
    assert not np.allclose(drawn[0][:, 1], raw)


def test_runs_without_a_validation_loss_get_their_own_marker_and_label(analysis):
    runs = analysis.study.runs.copy()
    runs.loc[:4, "loss_source"] = "train_smoothed"
    study = dataclasses.replace(analysis.study, runs=runs)
    texts = legend_texts(plots.loss_vs_flops(dataclasses.replace(analysis, study=study)).axes[0])
    assert "final validation loss of each run" in texts
    assert "final training loss of each run (mean of its last 10% of steps)" in texts


def test_fit_vs_observed_has_one_legend_entry_and_marker_per_model_size(analysis):
    ax = plots.fit_vs_observed(analysis).axes[0]
    legend = ax.get_legend()
    sizes = [(t.get_text(), h.get_marker()) for t, h in zip(legend.get_texts(), legend.legend_handles)
             if t.get_text().startswith("N = ")]
    assert [text for text, _ in sizes] == ["N = 200k", "N = 632k", "N = 2M", "N = 6.32M", "N = 20M"]
    assert len({marker for _, marker in sizes}) == len(SIZES)
    assert len(ax.collections) == len(SIZES)  # one scatter per size, coloured by D
    assert all(len(c.get_offsets()) == len(TOKENS) for c in ax.collections)


def test_the_frontier_is_not_drawn_where_it_exceeds_the_fitted_loss_of_a_smaller_run():
    class RanOff:  # a closed form that is no minimum: flat at 3 while a run is fitted at 2.5
        def loss_opt(self, c):
            return np.full(len(c), 3.0)

    drawn = plots.frontier(RanOff(), np.array([1.0, 10.0, 100.0]), runs_C=np.array([5.0]),
                           runs_fitted=np.array([2.5]))
    assert drawn[0] == 3.0 and np.isnan(drawn[1:]).all()


def test_a_study_without_curves_or_loss_sources_still_draws(analysis):
    runs = analysis.study.runs.drop(columns="loss_source")
    study = dataclasses.replace(analysis.study, runs=runs, curves=analysis.study.curves.iloc[0:0])
    ax = plots.loss_vs_flops(dataclasses.replace(analysis, study=study)).axes[0]
    assert "final loss of each run" in legend_texts(ax)
    assert not [c for c in ax.collections if isinstance(c, LineCollection)]
