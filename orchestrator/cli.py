"""``python -m orchestrator VERB ...``: parse arguments and hand them to one command module.

Each verb is a module in ``orchestrator/commands`` with ``add_arguments(parser)`` and
``run(args) -> int``. Command modules import nothing heavy at module level: the CLI
must start fast (no torch, pandas or scipy for list/show/status).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from orchestrator.errors import UsageError
from orchestrator.scheduler import SchedulerError

# verb -> one-line help; the module is orchestrator.commands.<verb>
COMMANDS = {
    "list": "list the experiment registries with their sizes and compute",
    "show": "show every experiment of a registry with its plan and estimated cost",
    "submit": "submit a registry's experiments as job arrays (slurm, or this machine)",
    "status": "show the state of submitted experiments",
    "cancel": "cancel queued or running experiments",
    "retry": "resubmit failed, timed-out, cancelled or diverged experiments",
    "sync": "pull a cluster's results home with rsync",
    "study": "run a whole study: submit, watch it live, fit the scaling law",
    "collect": "write one tidy table (parquet or csv) of all runs with config fields and final metrics",
    "analyze": "fit scaling laws to a study's results and draw the plots",
    "attribution": "rank a GradDotProd run's training samples by their in-run data value",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Plan, run and analyse scaling-law studies on SLURM or this machine.")
    parser.add_argument("--registry-module", action="append", default=[], metavar="MODULE",
                        help="extra module (dotted name or .py path) holding registries; repeatable")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, help_text in COMMANDS.items():
        module = importlib.import_module(f"orchestrator.commands.{verb}")
        sub = verbs.add_parser(verb, help=help_text, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(command=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 on bad syntax
    try:
        return args.command.run(args) or 0
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SchedulerError as exc:  # Slurm did not answer: not the user's typo, but no traceback either
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
