"""The pictures of an analysis, as PNG files (matplotlib, Agg backend: no display needed).

- loss_vs_flops.png: every (smoothed) training curve coloured by model size, each run's
  final loss, the fitted L(C) and the Approach 3 compute-optimal frontier;
- isoflop.png: the IsoFLOP profiles and their minima (when the study has them);
- fit_vs_observed.png: the Approach 3 fit against each run's final loss, by N and D;
- compute_optimal.png: N_opt and D_opt against C from every approach that applied,
  with the bootstrap band of Approach 3 and the extrapolated budgets marked.

A fitted curve is drawn only where it says something: near the data (one decade of
compute beyond the largest run), below the loss of a uniform guess, and with its
bootstrap band computed exactly as the printed intervals are.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from analysis.approaches import SMOOTH_WINDOW, group_by_budget  # noqa: E402
from analysis.checks import EXTRAPOLATION_FACTOR, extrapolated  # noqa: E402
from analysis.chinchilla import allocation_arrays  # noqa: E402
from orchestrator import fmt  # noqa: E402

FLOPS_LABEL = "compute C = 6ND (FLOPs)"
LOSS_LABEL = "loss (cross-entropy, nats/token)"
# The loader copies vocab_size from each run's spec; a table without it (built by hand)
# gets 256, the byte vocabulary every shipped workload reads.
DEFAULT_VOCAB_SIZE = 256
FITTED_DECADES_BEYOND = 1.0  # L(C) and the frontier stop one decade of C past the largest run
EXTRAPOLATION_LABEL = f"extrapolation (> {EXTRAPOLATION_FACTOR:g}x the largest run)"
# the loader's loss_source: marker and legend label of the final-loss dots
LOSS_SOURCES = {"val": ("o", "final validation loss of each run"),
                "train_smoothed": ("s", "final training loss of each run (mean of its last 10% of steps)")}
SIZE_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "p", "h", "<", ">", "*")


def draw_all(analysis, out_dir) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for name, draw in (("loss_vs_flops.png", loss_vs_flops), ("isoflop.png", isoflop),
                       ("fit_vs_observed.png", fit_vs_observed), ("compute_optimal.png", compute_optimal)):
        fig = draw(analysis)
        if fig is not None:
            fig.savefig(out_dir / name, dpi=120, bbox_inches="tight")
            plt.close(fig)
            written.append(out_dir / name)
    return written


def _plain_ticks(*axes) -> None:
    """Loss spans less than a decade: label log-scale ticks 2.2, 2.4 rather than 2.2x10^0."""
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for axis in axes:
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)


def uniform_loss(runs) -> float:
    """ln(vocab_size): the loss of guessing uniformly, above which no fitted curve means anything."""
    if "vocab_size" in runs and runs["vocab_size"].notna().any():
        return math.log(float(runs["vocab_size"].max()))  # mixed vocabularies: the loosest cap
    return math.log(DEFAULT_VOCAB_SIZE)


def fitted_range(runs, n=200) -> np.ndarray:
    """C from the smallest run to FITTED_DECADES_BEYOND decades past the largest."""
    return np.geomspace(float(runs["C"].min()), float(runs["C"].max()) * 10 ** FITTED_DECADES_BEYOND, n)


def frontier(law, c, runs_C, runs_fitted) -> np.ndarray:
    """The Approach 3 frontier min_N L(N, C/6N) at ``c``, NaN where it cannot be the minimum.

    A run at C_i is one allocation of C_i, so the frontier at C >= C_i (it falls with C)
    is at most that run's fitted loss. Where the closed form breaks this (a fit whose
    exponents ran off), it is not a minimum and is not drawn.
    """
    loss = np.asarray(law.loss_opt(c), float)
    order = np.argsort(runs_C)
    best = np.minimum.accumulate(np.asarray(runs_fitted, float)[order])
    below = np.searchsorted(np.asarray(runs_C, float)[order], c, side="right") - 1
    bound = np.where(below >= 0, best[np.maximum(below, 0)], np.inf)
    return np.where(np.isfinite(loss) & (loss <= bound * (1 + 1e-9)), loss, np.nan)


def loss_vs_flops(analysis):
    runs, curves = analysis.study.runs, analysis.study.curves
    if runs.empty:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    norm = LogNorm(runs["N"].min(), max(runs["N"].max(), runs["N"].min() * 1.01))
    size = runs.set_index("run")["N"]
    segments, colors = [], []
    for name, curve in (curves.groupby("run", sort=False) if len(curves) else ()):
        if name not in size.index:
            continue
        ok = np.isfinite(curve["loss"].to_numpy()) & (curve["flops"].to_numpy() > 0)
        # one batch's loss is noisy; the same rolling mean as the Approach 1 envelope
        smooth = curve["loss"][ok].rolling(SMOOTH_WINDOW, min_periods=1).mean().to_numpy()
        if ok.sum() > 1:
            segments.append(np.column_stack([curve["flops"].to_numpy()[ok], smooth]))
            colors.append(plt.cm.viridis(norm(size[name])))
    handles = []
    if segments:
        ax.add_collection(LineCollection(segments, colors=colors, linewidths=0.8, alpha=0.6))
        handles.append(Line2D([], [], color="gray", lw=0.8, label=f"training loss of each run (rolling mean "
                                                                   f"of {SMOOTH_WINDOW} logged steps)"))
    source = runs["loss_source"] if "loss_source" in runs else pd.Series("", index=runs.index)
    kinds = set(source)
    for kind in [k for k in LOSS_SOURCES if k in kinds] + sorted(kinds - set(LOSS_SOURCES), key=str):
        marker, label = LOSS_SOURCES.get(kind, ("o", "final loss of each run"))
        chosen = (source == kind).to_numpy()
        ax.scatter(runs["C"][chosen], runs["loss"][chosen], c=runs["N"][chosen], cmap="viridis", norm=norm,
                   s=16, marker=marker, edgecolors="black", linewidths=0.4, zorder=3)
        handles.append(Line2D([], [], ls="", marker=marker, markerfacecolor="lightgray", markeredgecolor="black",
                              label=label))

    cap = uniform_loss(runs)
    c_line = fitted_range(runs)
    if analysis.compute_law.reason is None:
        law = analysis.compute_law
        loss = law(c_line)
        keep = np.isfinite(loss) & (loss <= cap)
        handles += ax.plot(c_line[keep], loss[keep], color="crimson", lw=1.5, ls="--",
                           label=f"fitted L(C) = {law.E:.3g} + {law.A:.3g} / C^{law.alpha:.3f}")
    if analysis.law is not None:
        fitted = analysis.law.law.loss(runs["N"], runs["D"])
        loss = frontier(analysis.law.law, c_line, runs["C"].to_numpy(), fitted)
        keep = np.isfinite(loss) & (loss <= cap)
        handles += ax.plot(c_line[keep], loss[keep], color="black", lw=2,
                           label="Approach 3: compute-optimal frontier, min over N of the fitted L(N, C/6N)")
    handles.append(ax.axhline(cap, color="gray", lw=1, ls=":",
                              label=f"uniform guess: ln {math.exp(cap):.0f} = {cap:.2f}"))
    ax.set(xscale="log", yscale="log", xlabel=FLOPS_LABEL, ylabel=LOSS_LABEL,
           title="Loss against compute, by model size")
    _plain_ticks(ax.yaxis)
    ax.autoscale_view()
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="model size N (parameters)")
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=7.5)
    ax.grid(True, which="both", alpha=0.2)
    return fig


def isoflop(analysis):
    profiles = analysis.approach2.profiles
    if not profiles:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    budgets = [p["C"] for p in profiles]
    norm = LogNorm(min(budgets), max(max(budgets), min(budgets) * 1.01))
    for p in profiles:
        color = plt.cm.plasma(norm(p["C"]) * 0.85)
        ax.scatter(p["N"], p["loss"], color=color, s=18, zorder=3)
        x = np.linspace(np.log(p["N"].min()), np.log(p["N"].max()), 100)
        ax.plot(np.exp(x), np.polyval(p["parabola"], x), color=color, lw=1.2, label=f"C = {p['C']:.2g} FLOPs")
        if "N_opt" in p:
            ax.scatter([p["N_opt"]], [p["loss_min"]], marker="*", s=120, color=color, edgecolors="black", zorder=4)
    ax.set(xscale="log", yscale="log", xlabel="model size N (parameters)", ylabel=LOSS_LABEL,
           title="IsoFLOP profiles (stars: fitted minima)")
    _plain_ticks(ax.yaxis)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return fig


def fit_vs_observed(analysis):
    """Observed against fitted loss; marker shape (and size) is the model size, colour the tokens."""
    fit = analysis.law
    if fit is None:
        return None
    data = fit.data
    predicted = np.asarray(fit.law.loss(data["N"], data["D"]))
    observed = data["loss"].to_numpy()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    norm = LogNorm(data["D"].min(), max(data["D"].max(), data["D"].min() * 1.01))
    levels = group_by_budget(data["N"].to_numpy())  # sizes within 5% (rounding of widths) are one
    handles = []
    for level in np.unique(levels):
        at = levels == level
        marker = SIZE_MARKERS[level % len(SIZE_MARKERS)]
        area = 16 + 40 * level / max(1, levels.max())  # bigger models, bigger markers
        points = ax.scatter(observed[at], predicted[at], c=data["D"][at], cmap="cividis", norm=norm, s=area,
                            marker=marker, edgecolors="black", linewidths=0.4, zorder=3)
        handles.append(Line2D([], [], ls="", marker=marker, markersize=math.sqrt(area), markerfacecolor="lightgray",
                              markeredgecolor="black", label=f"N = {fmt.count(float(data['N'][at].min()))}"))
    lo = min(observed.min(), predicted.min()) * 0.97
    hi = max(observed.max(), predicted.max()) * 1.03
    handles += ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="fitted = observed")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="observed final " + LOSS_LABEL,
           ylabel="fitted " + LOSS_LABEL,
           title=f"Approach 3 fit (residual RMS in log loss: {fit.rms_log_residual:.4f})")
    _plain_ticks(ax.xaxis, ax.yaxis)
    fig.colorbar(points, ax=ax, label="tokens D")
    ax.legend(handles=handles, title="model size", fontsize=7.5, title_fontsize=8, loc="upper left",
              ncol=1 + len(handles) // 10)
    ax.grid(True, which="both", alpha=0.2)
    return fig


def bootstrap_band(fit, c, key) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, dropped share) of ``key`` at each C, as the printed intervals are taken.

    ``fit.interval`` (behind ``predict``) keeps the finite resamples and takes percentiles;
    a single resample that runs off to inf would otherwise make the upper edge inf at every C.
    """
    values = allocation_arrays(fit.samples, c)[key]
    bounds = np.array([fit.interval(values[:, j]) for j in range(values.shape[1])])
    return bounds[:, 0], bounds[:, 1], 1.0 - np.isfinite(values).mean(axis=0)


def _log_limits(core, wide, spread=100.0) -> tuple[float, float]:
    """Limits that show ``core`` and ``wide`` (a band), but the band at most ``spread`` x beyond the core."""
    core = np.asarray(core, float)
    core = core[np.isfinite(core) & (core > 0)]
    wide = np.asarray(wide, float)
    wide = wide[np.isfinite(wide) & (wide > 0)]
    lo, hi = core.min(), core.max()
    if wide.size:
        lo, hi = min(lo, max(wide.min(), lo / spread)), max(hi, min(wide.max(), hi * spread))
    return lo / 1.6, hi * 1.6


def compute_optimal(analysis):
    allocations = [a for a in (analysis.approach1, analysis.approach2) if a.reason is None]
    if analysis.law is None and not allocations:
        return None
    runs, fit = analysis.study.runs, analysis.law
    budgets = np.asarray(analysis.budgets, float)
    c_min = min([float(runs["C"].min())] + list(budgets))
    c_max = max([float(runs["C"].max())] + list(budgets))
    # the budgets are points of the line, so the band there is the printed interval
    c_line = np.unique(np.concatenate([np.geomspace(c_min, c_max, 200), budgets]))
    x_limits = (c_line.min() / 1.6, c_line.max() * 1.6)
    extrapolating = bool(extrapolated(budgets, runs["C"]).any())
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, key, column, unit in ((axes[0], "N_opt", "N", "parameters"), (axes[1], "D_opt", "D", "tokens")):
        ax.scatter(runs["C"], runs[column], color="lightgray", s=10, label="runs")
        shown = [runs[column].to_numpy(float)]  # what the axes must show (a band only within reason)
        point = lo = hi = np.empty(0)
        if fit is not None:
            point = getattr(fit.law, key.lower())(c_line)
            at_budgets = getattr(fit.law, key.lower())(budgets)
            shown += [point, at_budgets]
            ax.plot(c_line, point, color="black", lw=2, label="Approach 3")
            ax.scatter(budgets, at_budgets, marker="D", color="crimson", zorder=4, label="predictions at the budgets")
        for allocation, color in zip(allocations, ("tab:blue", "tab:orange")):
            law = allocation.n_opt if key == "N_opt" else allocation.d_opt
            short = allocation.method.split(":")[0]
            shown.append(law(c_line))
            ax.plot(c_line, law(c_line), color=color, lw=1.3, ls="--",
                    label=f"{short}: {key} ∝ C^{law.exponent:.3f}")
            if short == "Approach 2":
                ax.scatter(allocation.points["C"], allocation.points[key], color=color, marker="*", s=80, zorder=4)
        if fit is not None and len(fit.samples):
            lo, hi, dropped = bootstrap_band(fit, c_line, key)
        y_limits = _log_limits(np.concatenate(shown), np.concatenate([lo, hi]))
        if len(lo):
            _draw_band(ax, c_line, lo, hi, dropped, fit, key, y_limits[0])
        # the fit has no run with fewer tokens (or parameters) than the smallest: say so where it goes there
        smallest = float(runs[column].min())
        drawn = np.concatenate([point, lo])
        if (drawn[np.isfinite(drawn)] < smallest).any():
            what = "fewer tokens" if column == "D" else "smaller models"
            ax.axhspan(y_limits[0] / 10, smallest, facecolor="none", edgecolor="0.7", hatch="///", lw=0,
                       zorder=0, label=f"{what} than any run trained (< {fmt.count(smallest)}): no data")
        if extrapolating:
            ax.axvspan(EXTRAPOLATION_FACTOR * float(runs["C"].max()), x_limits[1] * 10, color="gold", alpha=0.15,
                       lw=0, zorder=0, label=EXTRAPOLATION_LABEL)
        ax.set(xscale="log", yscale="log", xlim=x_limits, ylim=y_limits, xlabel=FLOPS_LABEL,
               ylabel=f"{key} ({unit})", title=f"Compute-optimal {'model size' if key == 'N_opt' else 'token count'}")
        ax.legend(fontsize=7.5, loc="upper left")
        ax.grid(True, which="both", alpha=0.2)
    return fig


def _draw_band(ax, c, lo, hi, dropped, fit, key, bottom) -> None:
    """The bootstrap band, its label saying which resamples it could not use."""
    label = f"Approach 3, {fit.level:.0%} bootstrap interval"
    if dropped.max() > 0:
        share = f"{dropped.max():.1%}" if dropped.min() == dropped.max() else f"up to {dropped.max():.1%}"
        label += f"\n({share} of {len(fit.samples)} resamples dropped: {key} not finite)"
    if (lo <= 0).any():  # resamples with G = inf give D_opt = 0: the band runs off the log axis
        label += f"\n(down to {key} = 0 at some C: off the bottom of the axis)"
    ax.fill_between(c, np.where(lo > 0, lo, bottom / 10), hi, where=np.isfinite(lo) & np.isfinite(hi),
                    color="black", alpha=0.12, lw=0, label=label)
