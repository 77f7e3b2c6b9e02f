"""Time the full-grid Approach 3 fit: batched L-BFGS against a per-start scipy loop.

    python benchmarks/fit_speed.py [--points 250] [--seed 0] [--scattered] [--subsample 1]

Both fit the same 250 synthetic runs (10 model sizes x 25 token budgets, the paper's
parameters, 1% log-normal noise) from the same 4,500 starts of the paper's grid, with the
same stopping rule and tolerances and an analytic gradient, on one core each.
``--scattered`` gives every run its own token count, so that the objective cannot use the
grid of levels (an IsoFLOP-like design). Prints both times (ours: the median of --repeat
runs), the speed-up and both optima. ``--subsample k`` runs the scipy loop on every k-th
start only and scales its time up (for a quick look; the default runs the whole grid).
"""

from __future__ import annotations

import os

# One core each: OpenBLAS threads spin-wait on a busy machine and make scipy's loop
# erratic (10x slower under load), which would flatter the batched fit.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from analysis.chinchilla import (ChinchillaLaw, minimize_grid, paper_grid,  # noqa: E402
                                 predict_log, scipy_reference)

PAPER = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def synthetic(points: int, seed: int, scattered: bool = False):
    sizes = max(2, round(np.sqrt(points / 2.5)))
    budgets = points // sizes
    N = np.repeat(np.logspace(7.5, 10, sizes), budgets)
    D = np.tile(np.logspace(9, 12, budgets), sizes)
    rng = np.random.default_rng(seed)
    if scattered:  # every run its own token count (IsoFLOP-like designs)
        D = D * np.exp(rng.uniform(-0.1, 0.1, D.size))
    loss = PAPER.loss(N, D) * np.exp(rng.normal(0.0, 0.01, N.size))
    return np.log(np.stack([N, D])), np.log(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subsample", type=int, default=1, help="scipy on every k-th start")
    parser.add_argument("--scattered", action="store_true",
                        help="jitter every run's token count: no grid of levels (the gathered layout)")
    parser.add_argument("--repeat", type=int, default=5, help="batched runs (the median counts)")
    args = parser.parse_args()

    logx, logy = synthetic(args.points, args.seed, args.scattered)
    grid = paper_grid(2)
    print(f"{logx.shape[1]} points, {len(grid)} starts")

    times, cpu = [], []
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        ours = minimize_grid(logx, logy, grid)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    t_ours, c_ours = float(np.median(times)), float(np.median(cpu))

    starts = grid[::args.subsample]
    start, start_cpu = time.perf_counter(), time.process_time()
    theta_ref, f_ref = scipy_reference(logx, logy, starts)
    scale = len(grid) / len(starts)
    t_ref = (time.perf_counter() - start) * scale
    c_ref = (time.process_time() - start_cpu) * scale

    law, ref = ChinchillaLaw.from_theta(ours.theta), ChinchillaLaw.from_theta(theta_ref)
    print(f"batched L-BFGS   {t_ours:8.3f} s wall {c_ours:8.3f} s CPU   objective {ours.objective:.15g}   "
          f"({ours.n_converged}/{ours.n_starts} starts converged; runs: "
          + ", ".join(f"{t:.3f}" for t in times) + ")")
    scaled = " (scaled from every %d-th start)" % args.subsample if args.subsample > 1 else ""
    print(f"scipy loop       {t_ref:8.3f} s wall {c_ref:8.3f} s CPU   objective {f_ref:.15g}{scaled}")
    print(f"speed-up         {t_ref / t_ours:8.1f}x wall, {c_ref / c_ours:.1f}x CPU "
          "(a shared machine: CPU time is the steadier number)")
    print(f"objective ours - scipy: {ours.objective - f_ref:+.3e} "
          f"(relative {(ours.objective - f_ref) / f_ref:+.2e})")
    for name in ("E", "A", "B", "alpha", "beta"):
        print(f"  {name:5s} ours {getattr(law, name):12.6g}   scipy {getattr(ref, name):12.6g}")
    rms = np.sqrt(np.mean((predict_log(ours.theta, logx) - logy) ** 2))
    print(f"residual RMS (log loss): {rms:.4f}")


if __name__ == "__main__":
    main()
