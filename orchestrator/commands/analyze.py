"""Fit scaling laws to a study's results and draw the plots.

REGISTRY|FOLDER is a results folder (any existing directory, e.g. results/transformer) or
a registry name (then only that registry's runs are read). Prints the fitted law
L(N, D) = E + A/N^alpha + B/D^beta with bootstrap intervals, the compute-optimal model
size and token count at each --budget (a budget beyond 10x the largest run's compute is
marked as an extrapolation), the fit quality, the checks (a verdict, identifiability,
design, accounting, a hold-out of the largest size), and the other approaches that the
study's design allows. Writes report.json and PNG plots to --out (default
<folder>/analysis/, or <results>/analysis/<REGISTRY>/ for a registry).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from orchestrator.errors import UsageError

MAX_LISTED = 15  # excluded runs listed by name; the rest are counted

# argparse before Python 3.14 knows no exponent in a negative number: it takes '-1e15' for an
# option, and `--budget -1e15` fails with "expected at least one argument". With this pattern
# the value reaches parse_budgets, which names it. No option of ours looks like a number.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def add_arguments(parser) -> None:
    parser._negative_number_matcher = NEGATIVE_NUMBER
    # Optional only in argparse's eyes: `--budget 1e21 QUICKSTART` hands it to the greedy
    # --budget, and take_target gets it back.
    parser.add_argument("target", nargs="?", metavar="REGISTRY|FOLDER", help="results folder or registry name")
    parser.add_argument("--budget", nargs="+", action="extend", default=[], metavar="FLOPS",
                        help="FLOP budgets for compute-optimal predictions, e.g. 1e21 1e22 "
                             "(default: the study's largest, x10 and x100)")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="N",
                        help="bootstrap resamples of the runs for the intervals (0: none; default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--params", choices=("total", "non_embedding"), default="total",
                        help="which parameter count is N (default: total, as C = 6ND counts it)")
    parser.add_argument("--include-incomplete", action="store_true",
                        help="also fit runs that are still running, failed or stopped early")
    parser.add_argument("--include-diverged", action="store_true", help="also fit diverged runs")
    parser.add_argument("--out", metavar="DIR", help="where to write report.json and the plots")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def take_target(target: str | None, budgets: list[str], missing: str = "analyze needs a REGISTRY or FOLDER"):
    """(target, budgets): a positional that ``--budget``'s nargs="+" swallowed, given back.

    It is the last value that is not a number, wherever the flags put it
    (``--budget 1e21 QUICKSTART --budget 1e22``).
    """
    if target is not None:
        return target, budgets
    words = [i for i, value in enumerate(budgets) if not _is_number(value)]
    if not words:
        raise UsageError(missing)
    i = words[-1]
    return budgets[i], budgets[:i] + budgets[i + 1:]


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def parse_budgets(values) -> list[float]:
    budgets = []
    for value in values:
        try:
            budget = float(value)
        except ValueError:
            budget = float("nan")
        if not (math.isfinite(budget) and budget > 0):
            raise UsageError(f"--budget must be a positive number of FLOPs such as 1e21, got {value!r}")
        budgets.append(budget)
    return budgets


def resolve(target: str, extra_modules) -> tuple[list, Path, str]:
    """(run paths, default output directory, description) for a folder or a registry."""
    from analysis.loader import discover
    from orchestrator.paths import RunPaths, results_root

    folder = Path(target)
    if folder.is_dir():
        paths = discover(folder)
        if not paths:
            raise UsageError(f"no runs in {folder} (expected <label>.csv files with config_<label>.json)")
        return paths, folder / "analysis", str(folder)
    if folder.is_file():
        raise UsageError(f"{folder} is a file; analyze reads a results folder, e.g. {folder.parent}")
    if "/" in target or target.startswith("."):
        raise UsageError(f"no such results folder {target!r} (and a registry name has no '/')")
    from orchestrator.registry import load_registry

    specs = load_registry(target, extra_modules)  # raises UsageError for an unknown name
    paths = [RunPaths.of(spec.folder_name, spec.label) for spec in specs]
    return paths, results_root() / "analysis" / target, f"registry {target}"


def run(args) -> int:
    import json

    target, budgets = take_target(args.target, args.budget)
    budgets = parse_budgets(budgets)
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    paths, out_dir, described = resolve(target, args.registry_module)

    from analysis.loader import load_runs
    from analysis.report import analyze

    study = load_runs(paths, include_incomplete=args.include_incomplete,
                      include_diverged=args.include_diverged)
    if study.runs.empty:
        states = study.excluded["state"].value_counts().to_dict()
        raise UsageError(
            f"no usable runs in {described}: {len(study.excluded)} excluded "
            f"({', '.join(f'{n} {s}' for s, n in states.items()) or 'none'}), "
            f"{_with_problems(len(study.problems))} (--include-incomplete uses unfinished runs)"
            + "".join(f"; {row.path}: {row.problem}" for row in study.problems.head(3).itertuples()))
    analysis = analyze(study, budgets=budgets or None, bootstrap=args.bootstrap, seed=args.seed,
                       params=args.params)
    files = analysis.write(Path(args.out) if args.out else out_dir)
    if args.json:
        print(json.dumps({**analysis.to_dict(), "files": [str(f) for f in files]}, indent=2))
        return 0
    render(analysis, files, described)
    return 0


def render(analysis, files, described) -> None:
    from rich.markup import escape
    from rich.table import Table

    from orchestrator import fmt

    console = fmt.console()
    study = analysis.study
    runs = study.runs
    sources = ", ".join(f"{n} {s}" for s, n in runs["loss_source"].value_counts().items())
    console.print(f"[bold]{described}[/]: {len(runs)} runs used (final loss: {sources}), "
                  f"{len(study.excluded)} excluded, {_with_problems(len(study.problems))}")
    for row in study.excluded.head(MAX_LISTED).itertuples():
        console.print(f"  [yellow]excluded[/] {row.run}: {row.reason}")
    if len(study.excluded) > MAX_LISTED:
        console.print(f"  ... and {len(study.excluded) - MAX_LISTED} more (see report.json)")
    for row in study.problems.itertuples():
        console.print(f"  [red]problem[/] {row.path}: {row.problem}")

    # the verdict first: a reader who stops here should not take a weak fit for a result
    review = analysis.review
    colour = {"well constrained": "green", "weakly constrained": "yellow"}.get(review.verdict, "red")
    console.print(f"[bold {colour}]{escape(review.line)}[/]")
    found = review.identifiability
    if found and "run_off_share" in found:
        widths = ", ".join(f"{k} +-{v:.0%}" for k, v in found["relative_half_widths"].items())
        console.print(f"  [dim]checks:[/] {found['run_off_share']:.0%} of {found['bootstrap_resamples']} "
                      f"bootstrap resamples ran off; 95% half-widths {widths}, a +-{found['a_half_width']:.2f}")
    if found:
        at = ", ".join(found["optimum_at_bound"]) or "none"
        outside = ", ".join(found.get("optimum_outside_grid") or []) or "none"
        console.print(f"  [dim]checks:[/] {found.get('starts_at_best', float('nan')):.0%} of grid starts "
                      f"reach the best optimum; at a bound: {at}; outside the grid of starts: {outside}")
    design = review.design
    spread = design["tokens_per_param"]
    console.print(f"  [dim]design:[/] {design['model_sizes']} model sizes x {design['token_budgets']} "
                  f"token budgets" + (f", D/N {spread[0]:.3g} to {spread[1]:.3g}" if spread else ""))
    accounting = _accounting_line(review.accounting)
    if accounting:
        console.print(f"  [dim]accounting:[/] {escape(accounting)}")
    holdout = review.extrapolation.get("holdout")
    if holdout:
        console.print(f"  [dim]extrapolation:[/] {escape(_holdout_line(holdout))}")
    for warning in review.warnings:
        console.print(f"  [yellow]warning:[/] {escape(warning)}")

    law = analysis.law
    if law is None:
        console.print(f"[yellow]Approach 3 (L(N, D)) not fitted[/]: {analysis.law_reason}")
    else:
        level = f"{law.level:.0%} interval" + ("" if len(law.samples) else " (no bootstrap)")
        table = Table(title="L(N, D) = E + A / N^alpha + B / D^beta  (Approach 3, Huber fit in log space)",
                      caption=(f"{law.n_points} runs, residual RMS in log loss {law.rms_log_residual:.4f}, "
                               f"objective {law.objective:.4g}, {law.n_converged}/{law.n_starts} starts "
                               f"converged, {len(law.samples)} bootstrap resamples"),
                      caption_justify="left")
        for column in ("parameter", "estimate", level):
            table.add_column(column, justify="left" if column == "parameter" else "right")
        notes = {"a": "N_opt ∝ C^a", "b": "D_opt ∝ C^b", "G": "N_opt = G (C/6)^a"}
        for name, p in law.parameters().items():
            label = f"{name}  [dim]{notes[name]}[/]" if name in notes else name
            table.add_row(label, f"{p['value']:.4g}", _interval(p["low"], p["high"]))
        console.print(table)

        rows = analysis.predictions.to_dict(orient="records")
        beyond = [row for row in rows if row.get("extrapolated")]
        largest = review.extrapolation.get("largest_run_C")
        caption = (f"* extrapolated: beyond {review.extrapolation['factor']:g}x the largest run's C "
                   f"({fmt.flops(largest)})" if beyond and largest else None)
        table = Table(title="Compute-optimal allocation (C = 6ND)", caption=caption, caption_justify="left")
        for column in ("budget C (FLOPs)", "N_opt (params)", "D_opt (tokens)", "tokens/param", "loss"):
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(fmt.flops(row["C"]) + (" *" if row.get("extrapolated") else ""), *(
                f"{fmt.count(row[k]) if k != 'loss_opt' else format(row[k], '.4f')} "
                f"[dim]{_interval(row[k + '_low'], row[k + '_high'], k)}[/]"
                for k in ("N_opt", "D_opt", "tokens_per_param", "loss_opt")))
        console.print(table)
        _print_both_counts(console, review.accounting, analysis.budgets, analysis.settings["params"])

    table = Table(title="Other approaches")
    for column in ("approach", "result"):
        table.add_column(column, overflow="fold")
    for allocation in (analysis.approach1, analysis.approach2):
        if allocation.reason:
            table.add_row(allocation.method, f"[yellow]not applicable[/]: {allocation.reason}")
        else:
            table.add_row(allocation.method, f"N_opt ∝ C^{allocation.n_opt.exponent:.3f}, "
                                             f"D_opt ∝ C^{allocation.d_opt.exponent:.3f} "
                                             f"({len(allocation.points)} points)")
    for fit in analysis.size_laws + [analysis.compute_law]:
        if fit.reason:
            table.add_row(fit.label, f"[yellow]not fitted[/]: {fit.reason}")
        else:
            x = fit.variable
            table.add_row(fit.label, f"{fit.E:.4g} + {fit.A:.4g} / {x}^{fit.alpha:.3f} "
                                     f"(RMS {fit.rms_log_residual:.4f}, {fit.n_points} points)")
    console.print(table)
    console.print("wrote " + ", ".join(str(f) for f in files))


def _accounting_line(found: dict) -> str:
    """What N counts and where the losses were read, in one line (the problems are warnings)."""
    parts = []
    counts = found.get("parameter_counts") or {}
    if "max_relative_difference" in counts:
        apart = f"total and non-embedding N up to {counts['max_relative_difference']:.1%} apart"
        if not counts["differ"]:
            parts.append(apart + ": one fit serves both")
        elif counts.get("fits") and len(counts["fits"]) == 2:
            parts.append(apart + ": L(N, D) under each below")
        else:
            parts.append(f"{apart}; {counts['reason']}")
    warmup = found.get("warmup")
    if warmup and warmup["max_share"] is not None:
        parts.append(f"warmup up to {warmup['max_share']:.0%} of the planned steps")
    early = found.get("read_early")
    if early is not None:
        parts.append(f"{len(early)} final loss{'es' if len(early) > 1 else ''} read before the schedule ends"
                     if early else "every final loss read at the end of its schedule")
    return "; ".join(parts)


def _holdout_line(holdout: dict) -> str:
    from orchestrator import fmt

    if holdout.get("reason"):
        return f"hold-out of the largest size skipped: {holdout['reason']}"
    return (f"fitted without the largest size (N={fmt.count(holdout['N'])}, {holdout['held_out_runs']} runs), "
            f"the law predicts its losses within {holdout['mean_abs_error']:.1%} on average "
            f"(max {holdout['max_abs_error']:.1%}, signed mean {holdout['mean_error']:+.1%})")


def _print_both_counts(console, accounting: dict, budgets, params: str) -> None:
    """L(N, D) under total and non-embedding N side by side, when they differ enough to matter."""
    from rich.table import Table

    from orchestrator import fmt

    fits = (accounting.get("parameter_counts") or {}).get("fits") or {}
    if len(fits) < 2:
        return
    other = "non_embedding" if params == "total" else "total"
    table = Table(title="L(N, D) under each parameter count",
                  caption=(f"The {params.replace('_', '-')} fit is the one above; the {other.replace('_', '-')} "
                           "fit has no bootstrap. Each reads C as 6 x its own N x D."),
                  caption_justify="left")
    headers = {"total": "total N (Hoffmann)", "non_embedding": "non-embedding N (Kaplan)"}
    table.add_column("")
    for key in ("total", "non_embedding"):
        table.add_column(headers[key], justify="right")
    for name in ("E", "alpha", "beta", "a"):
        table.add_row(name, *(f"{fits[key][name]:.4g}" for key in ("total", "non_embedding")))
    for j, budget in enumerate(budgets):
        table.add_row(f"N_opt at {fmt.flops(budget)}",
                      *(fmt.count(fits[key]["N_opt"][j]) for key in ("total", "non_embedding")))
    console.print(table)


def _with_problems(n: int) -> str:
    return "1 with a problem" if n == 1 else f"{n} with problems"


def _interval(low, high, kind="") -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    if kind in ("N_opt", "D_opt", "tokens_per_param"):
        from orchestrator import fmt

        return f"[{fmt.count(low)}, {fmt.count(high)}]"
    if kind == "loss_opt":
        return f"[{low:.4f}, {high:.4f}]"
    return f"[{low:.4g}, {high:.4g}]"
