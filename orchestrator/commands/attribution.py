"""Rank a GradDotProd run's training samples by their in-run data value.

TARGET is a run directory (one with grad_dotprods/), a results folder (every run under it
that has logged dot products) or a registry name (its method='graddotprod' experiments).
An example's value is workloads/dotlog.py's: summed over the steps that trained on it, the
first-order reduction of the attribution data's loss credited to it (lr * <grad l(w, z_i),
grad L_val(w)>), so a positive value helped and the most harmful examples rank lowest. For each run:
the steps, samples and distinct examples logged, the validation loss at the first and last
logged step, and the --top highest- and lowest-valued examples with their text. Writes
grad_dotprods/values.csv when it is missing or older than the log, and three plots to --out
(default <run>/grad_dotprods/plots/; <out>/<folder>/<label>/ when TARGET has several runs).

--drop-lowest F --export DIR (one run): DIR/kept.jsonl holds every example outside the
lowest-valued fraction F, one {"text": ...} record each in example-id order, so a curation
rerun can train on dataset=DIR; the dropped ones go to DIR.dropped.jsonl beside DIR (the
dataset reader reads every .jsonl/.txt under DIR). Examples the run never saw are in neither.
"""

from __future__ import annotations

from orchestrator.errors import UsageError

TABLE_COLUMNS = ("rank", "example", "value", "times seen", "mean dot", "text")


def add_arguments(parser) -> None:
    parser.add_argument("target", metavar="TARGET", help="run directory, results folder or registry name")
    parser.add_argument("--top", type=int, default=10, metavar="K",
                        help="examples listed at each end of the ranking (default 10)")
    parser.add_argument("--out", metavar="DIR", help="where to write the plots (default <run>/grad_dotprods/plots)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--drop-lowest", type=float, metavar="FRACTION",
                        help="with --export: leave out this fraction (0 < F < 1) of the lowest-valued examples")
    parser.add_argument("--export", metavar="DIR", help="with --drop-lowest: write the kept examples to DIR/kept.jsonl")


def run(args) -> int:
    import json

    if args.top < 0:
        raise UsageError(f"--top must be >= 0, got {args.top}")
    fraction = args.drop_lowest
    if (fraction is None) != (args.export is None):
        raise UsageError("--drop-lowest FRACTION and --export DIR go together: "
                         "the kept examples need a directory, and the directory a fraction to drop")
    if fraction is not None and not 0 < fraction < 1:
        raise UsageError(f"--drop-lowest must be a fraction strictly between 0 and 1, e.g. 0.1, got {fraction!r}")

    from analysis import attribution

    if args.export is not None:
        attribution.check_export_dir(args.export)
    runs, described = attribution.find_runs(args.target, args.registry_module)
    if args.export is not None and len(runs) > 1:
        raise UsageError(f"--export writes one run's examples; {described} has {len(runs)} runs with dot "
                         f"products: {', '.join(r.name for r in runs[:5])}{' ...' if len(runs) > 5 else ''}")
    reports = [attribution.report(r, top=args.top, out_dir=attribution.plot_dir(r, args.out, len(runs) > 1),
                                  drop_lowest=fraction, export_dir=args.export) for r in runs]
    if args.json:
        print(json.dumps({"target": described, "runs": reports}, indent=2))
        return 0
    for report in reports:
        render(report)
    return 0


def render(report: dict) -> None:
    from analysis.attribution import snippet
    from orchestrator import fmt

    console = fmt.console()
    console.print(f"[bold]{report['run']}[/]: {report['steps_logged']} steps logged "
                  f"({report['first_step']}..{report['last_step']}), {report['samples']} samples, "
                  f"{report['examples']} distinct examples; validation loss {report['val_loss_first']:.4f} "
                  f"at step {report['first_step']}, {report['val_loss_last']:.4f} at step {report['last_step']}")
    for key, title in (("top", "highest value"), ("bottom", "lowest value")):
        if not report[key]:
            continue
        rows = [(str(e["rank"]), str(e["example"]), f"{e['value']:.4g}", str(e["times_seen"]),
                 f"{e['mean_dot']:.4g}", "(no text)" if e["text"] is None else snippet(e["text"]))
                for e in report[key]]
        console.print(fmt.table_text(TABLE_COLUMNS, rows, right=set(TABLE_COLUMNS) - {"text"},
                                     title=f"{len(rows)} examples of {title} (rank 1 is the highest)"))
    exported = report.get("export")
    if exported:
        cut = exported["highest_dropped_value"]
        console.print(f"kept {exported['kept']} examples in {exported['kept_jsonl']} (dataset={exported['dataset']}), "
                      f"dropped {exported['dropped']}" + (f" (value <= {cut:.4g})" if cut is not None else "")
                      + f" to {exported['dropped_jsonl']}")
    console.print(f"wrote {report['values_csv']}, " + ", ".join(report["plots"]))
