"""One tidy table of all runs, for notebooks: every config field plus the final metrics.

One row per run that has metrics (running, failed and diverged ones included, with their
``state``): N, D, C, the final validation and smoothed training loss, steps, and every
field of its spec. Runs without metrics yet and unreadable files are listed on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.errors import UsageError

FORMATS = (".parquet", ".csv")


def add_arguments(parser) -> None:
    parser.add_argument("target", metavar="REGISTRY|FOLDER", help="results folder or registry name")
    parser.add_argument("--out", type=Path, required=True, help="table.parquet or table.csv")


def run(args) -> int:
    if args.out.suffix not in FORMATS:
        raise UsageError(f"--out must end in {' or '.join(FORMATS)}, got {str(args.out)!r}")
    from orchestrator.commands.analyze import resolve

    paths, _, described = resolve(args.target, args.registry_module)

    from analysis.loader import load_runs

    study = load_runs(paths, include_incomplete=True, include_diverged=True, spec_fields=None)
    for row in study.excluded.itertuples():
        print(f"no metrics: {row.run} ({row.reason})", file=sys.stderr)
    for row in study.problems.itertuples():
        print(f"problem: {row.path}: {row.problem}", file=sys.stderr)
    if study.runs.empty:
        raise UsageError(f"no runs with metrics in {described}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    if args.out.suffix == ".parquet":
        study.runs.to_parquet(tmp, index=False)
    else:
        study.runs.to_csv(tmp, index=False)
    tmp.replace(args.out)
    print(f"wrote {len(study.runs)} runs x {len(study.runs.columns)} columns to {args.out}")
    return 0
