"""Write a results folder of runs drawn from a known law, in the trainer's file formats.

The analysis can be built and tested before any model is trained, and a fit on data from
known parameters is the only test of a fit that can fail for the right reason. Each run's
curve is the law at (N, tokens so far) times log-normal noise: a per-run offset (the
seed-to-seed spread of final losses) and a smaller per-step jitter.
"""

from __future__ import annotations

import hashlib

import numpy as np

from orchestrator.paths import RunPaths, atomic_write_json, atomic_write_text

CSV_HEADER = ("optimizer_step,tokens_processed,loss,learning_rate,theoretical_flops_chinchilla,"
              "grad_norm,tokens_per_s,elapsed_s,val_loss")


def grid_design(sizes, token_budgets) -> list[tuple[float, float]]:
    """Every model size with every token budget (the Approach 3 design)."""
    return [(float(n), float(d)) for n in sizes for d in token_budgets]


def isoflop_design(budgets, sizes_per_budget=5, spread=4.0, law=None) -> list[tuple[float, float]]:
    """For each FLOP budget, model sizes log-spaced around the optimum (x/ spread), D = C / 6N."""
    pairs = []
    for C in budgets:
        centre = law.n_opt(C) if law is not None else np.sqrt(C / 120.0)  # 20 tokens/param
        for n in np.geomspace(centre / spread, centre * spread, sizes_per_budget):
            pairs.append((float(n), float(C / (6.0 * n))))
    return pairs


def write_study(root, folder_name, law, pairs, *, noise=0.01, seed=0, steps=40,
                val_loss=True, state="completed") -> list[RunPaths]:
    """Write one run per (N, D) pair under ``root/folder_name``; returns their paths.

    ``law(N, D)`` gives the noiseless loss (e.g. ``ChinchillaLaw.loss``).
    """
    rng = np.random.default_rng(seed)
    written = []
    for i, (N, D) in enumerate(pairs):
        label = f"run{i:04d}_n{N:.3g}_d{D:.3g}".replace("+", "")
        paths = RunPaths.of(folder_name, label, root)
        write_run(paths, N, D, law, rng, noise=noise, steps=steps, val_loss=val_loss, state=state)
        written.append(paths)
    return written


def write_run(paths: RunPaths, N, D, law, rng, *, noise=0.01, steps=40, val_loss=True,
              state="completed") -> None:
    """One run's CSV, config and status.json, as the trainer and the worker write them."""
    loss_of = getattr(law, "loss", law)
    N = int(round(N))
    tokens_per_step = max(1, int(round(D / steps)))
    step = np.arange(1, steps + 1)
    tokens = step * tokens_per_step
    offset = rng.normal(0.0, noise)
    loss = loss_of(N, tokens) * np.exp(offset + rng.normal(0.0, noise / 2, steps))
    final_val = loss_of(N, tokens[-1]) * np.exp(offset)
    lines = [CSV_HEADER]
    for j in range(steps):
        val = f"{final_val:.6f}" if val_loss and j == steps - 1 else ""
        lines.append(f"{step[j]},{tokens[j]},{loss[j]:.6f},1e-3,{6.0 * N * tokens[j]:.6e},"
                     f"1.0,1000.0,{j + 1:.1f},{val}")
    atomic_write_text(paths.metrics_csv, "\n".join(lines) + "\n")
    derived = {"total_params": N, "non_embedding_params": int(0.9 * N), "tokens": int(tokens[-1]),
               "optimizer_steps": steps, "tokens_per_step": tokens_per_step,
               "flops": 6.0 * N * tokens[-1], "flops_formula": "6 * total_params * tokens"}
    spec = {"workload": "synthetic", "label": paths.label, "folder_name": paths.folder.name}
    identity = hashlib.sha256(paths.label.encode()).hexdigest()[:12]
    atomic_write_json(paths.config_json, {"spec": spec, "identity": identity, "derived": derived, "plan": {}})
    atomic_write_json(paths.status_json, {"state": state, "optimizer_step": steps})
