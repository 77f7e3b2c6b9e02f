"""Show the state of submitted experiments: one sacct and one squeue call for all of them.

States: not submitted, pending, running, requeued (waiting to run again after a requeue),
preempted, interrupted (stopped by a signal with a checkpoint, not requeued), completed,
failed, timeout (out of requeues at the time limit), cancelled, diverged, missing (the
scheduler forgot the job and the run never finished).
"""

from __future__ import annotations

import time

from orchestrator import fmt
from orchestrator.errors import UsageError
from orchestrator.selector import select

MIN_WATCH_S = 10
STATE_STYLE = {"completed": "green", "running": "cyan", "pending": "blue", "requeued": "magenta",
               "preempted": "magenta", "interrupted": "yellow", "failed": "red", "timeout": "red", "diverged": "red", "missing": "red",
               "cancelled": "yellow", "not submitted": "dim"}


def add_arguments(parser) -> None:
    parser.add_argument("selector", nargs="?", default=None,
                        help="registry, job id or label glob (default: every submitted registry)")
    parser.add_argument("--watch", nargs="?", type=float, const=30.0, default=None, metavar="SECONDS",
                        help=f"refresh until nothing is queued or running (default every 30 s, at least {MIN_WATCH_S})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def collect(selector, extra_modules) -> dict:
    from orchestrator.status import experiment_states_of

    return experiment_states_of(select(selector, extra_modules))


COLUMNS = ("label", "state", "job", "elapsed", "step", "tokens", "loss", "val loss", "reason")


def render(by_registry: dict):
    from rich.console import Group
    from rich.text import Text

    from orchestrator.status import summarize

    parts = []
    for name, statuses in by_registry.items():
        rows = [(s.spec.run_name, s.state, s.job_id or "", s.elapsed,
                 "" if s.optimizer_step is None else str(s.optimizer_step),
                 "" if s.tokens_processed is None else fmt.count(s.tokens_processed),
                 "" if s.loss is None else f"{s.loss:.4f}", "" if s.val_loss is None else f"{s.val_loss:.4f}",
                 s.reason[-200:]) for s in statuses]
        parts.append(fmt.table_text(COLUMNS, rows, right={"step", "tokens", "loss", "val loss"},
                                    title=f"{name}: {len(statuses)} experiments",
                                    style_of=lambda column, cell: STATE_STYLE.get(cell) if column == "state" else None))
        counts = Text()
        for number, (state, n) in enumerate(summarize(statuses).items()):
            counts.append(", " if number else "")
            counts.append(f"{n} {state}", style=STATE_STYLE.get(state))
        parts.append(counts)
    return Group(*parts)


def run(args) -> int:
    import json

    if args.watch is not None and args.watch < MIN_WATCH_S:
        raise UsageError(f"--watch must be at least {MIN_WATCH_S} s (be polite to the scheduler), got {args.watch:g}")
    by_registry = collect(args.selector, args.registry_module)
    if args.json:
        print(json.dumps({name: [s.to_dict() for s in statuses] for name, statuses in by_registry.items()},
                         indent=2))
        return 0
    console = fmt.console()
    if not by_registry:
        console.print("nothing submitted yet (see `python -m orchestrator list`)")
        return 0
    if args.watch is None:
        console.print(render(by_registry))
        return 0
    from rich.live import Live

    from orchestrator.status import ACTIVE_STATES

    with Live(render(by_registry), console=console, refresh_per_second=1) as live:
        while any(s.state in ACTIVE_STATES for statuses in by_registry.values() for s in statuses):
            time.sleep(args.watch)
            by_registry = collect(args.selector, args.registry_module)
            live.update(render(by_registry))
    return 0
