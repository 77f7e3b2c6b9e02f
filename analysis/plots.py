"""The pictures of an analysis, as PNG files (matplotlib, Agg backend: no display needed).

- loss_vs_flops.png: every training curve coloured by model size, with the fitted
  compute-optimal frontier (Approach 3) and L(C);
- isoflop.png: the IsoFLOP profiles and their minima (when the study has them);
- fit_vs_observed.png: the Approach 3 fit against each run's final loss;
- compute_optimal.png: N_opt and D_opt against C from every approach that applied.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from analysis.chinchilla import allocation_arrays  # noqa: E402

FLOPS_LABEL = "compute C = 6ND (FLOPs)"
LOSS_LABEL = "loss (cross-entropy, nats/token)"


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


def loss_vs_flops(analysis):
    runs, curves = analysis.study.runs, analysis.study.curves
    if runs.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    norm = LogNorm(runs["N"].min(), max(runs["N"].max(), runs["N"].min() * 1.01))
    size = runs.set_index("run")["N"]
    segments, colors = [], []
    for name, curve in curves.groupby("run", sort=False):
        ok = np.isfinite(curve["loss"].to_numpy()) & (curve["flops"].to_numpy() > 0)
        if ok.sum() > 1:
            segments.append(np.column_stack([curve["flops"].to_numpy()[ok], curve["loss"].to_numpy()[ok]]))
            colors.append(plt.cm.viridis(norm(size[name])))
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=0.8, alpha=0.6))
    ax.scatter(runs["C"], runs["loss"], c=runs["N"], cmap="viridis", norm=norm, s=14,
               edgecolors="black", linewidths=0.3, zorder=3, label="final loss of each run")
    c_min = float(curves["flops"][curves["flops"] > 0].min()) if len(curves) else float(runs["C"].min())
    c_line = np.geomspace(c_min, max(analysis.budgets + [float(runs["C"].max())]), 200)
    if analysis.law is not None:
        # fitted on final losses: drawn from a decade below the smallest run, not from the
        # first logged step, where its extrapolation means nothing
        c_frontier = c_line[c_line >= float(runs["C"].min()) / 10]
        ax.plot(c_frontier, analysis.law.law.loss_opt(c_frontier), color="black", lw=2,
                label="Approach 3: compute-optimal frontier")
    if analysis.compute_law.reason is None:
        law = analysis.compute_law
        ax.plot(c_line, law(c_line), color="crimson", lw=1.5, ls="--",
                label=f"L(C) = {law.E:.3g} + {law.A:.3g} / C^{law.alpha:.3f}")
    ax.set(xscale="log", yscale="log", xlabel=FLOPS_LABEL, ylabel=LOSS_LABEL,
           title="Loss against compute, by model size")
    _plain_ticks(ax.yaxis)
    ax.autoscale_view()
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="model size N (parameters)")
    ax.legend(loc="upper right", fontsize=8)
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
    fit = analysis.law
    if fit is None:
        return None
    data = fit.data
    predicted = fit.law.loss(data["N"], data["D"])
    fig, ax = plt.subplots(figsize=(6, 5.5))
    points = ax.scatter(data["loss"], predicted, c=data["D"], cmap="cividis", norm=LogNorm(), s=18,
                        edgecolors="black", linewidths=0.3, label="runs")
    lo = min(data["loss"].min(), predicted.min()) * 0.97
    hi = max(data["loss"].max(), predicted.max()) * 1.03
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="fitted = observed")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="observed final " + LOSS_LABEL,
           ylabel="fitted " + LOSS_LABEL,
           title=f"Approach 3 fit (residual RMS in log loss: {fit.rms_log_residual:.4f})")
    _plain_ticks(ax.xaxis, ax.yaxis)
    fig.colorbar(points, ax=ax, label="tokens D")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return fig


def compute_optimal(analysis):
    allocations = [a for a in (analysis.approach1, analysis.approach2) if a.reason is None]
    if analysis.law is None and not allocations:
        return None
    runs = analysis.study.runs
    c_line = np.geomspace(float(runs["C"].min()), max(analysis.budgets + [float(runs["C"].max())]), 100)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, unit in ((axes[0], "N_opt", "parameters"), (axes[1], "D_opt", "tokens")):
        ax.scatter(runs["C"], runs["N" if key == "N_opt" else "D"], color="lightgray", s=10, label="runs")
        if analysis.law is not None:
            fit = analysis.law
            point = getattr(fit.law, key.lower())(c_line)
            ax.plot(c_line, point, color="black", lw=2, label="Approach 3")
            if len(fit.samples):
                band = allocation_arrays(fit.samples, c_line)[key]
                tail = 50.0 * (1.0 - fit.level)
                with np.errstate(over="ignore", invalid="ignore"):  # resamples that ran off to ~inf
                    lo, hi = np.nanpercentile(band, [tail, 100.0 - tail], axis=0)
                ax.fill_between(c_line, lo, hi, color="black", alpha=0.12,
                                label=f"Approach 3, {fit.level:.0%} bootstrap interval")
            budgets = np.asarray(analysis.budgets)
            ax.scatter(budgets, getattr(fit.law, key.lower())(budgets), marker="D", color="crimson",
                       zorder=4, label="predictions at the budgets")
        for allocation, color in zip(allocations, ("tab:blue", "tab:orange")):
            law = allocation.n_opt if key == "N_opt" else allocation.d_opt
            short = allocation.method.split(":")[0]
            ax.plot(c_line, law(c_line), color=color, lw=1.3, ls="--",
                    label=f"{short}: {key} ∝ C^{law.exponent:.3f}")
            if short == "Approach 2":
                ax.scatter(allocation.points["C"], allocation.points[key], color=color, marker="*", s=80, zorder=4)
        ax.set(xscale="log", yscale="log", xlabel=FLOPS_LABEL, ylabel=f"{key} ({unit})",
               title=f"Compute-optimal {'model size' if key == 'N_opt' else 'token count'}")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.2)
    return fig
