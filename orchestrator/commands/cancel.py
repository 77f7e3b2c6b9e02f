"""Cancel exactly what a selector names: whole arrays when all their tasks are selected.

Asks for confirmation with a count (-y skips it). Nothing is ever cancelled implicitly.
"""

from __future__ import annotations

import os
import signal
import sys

from orchestrator import fmt, manifest, scheduler
from orchestrator.errors import UsageError
from orchestrator.selector import select


def add_arguments(parser) -> None:
    parser.add_argument("selector", help="registry, job id or label glob")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def targets(selected: dict) -> tuple[list[str], list[str], int]:
    """(slurm ids to scancel, local runner pids, experiments) for the active selected experiments."""
    from orchestrator.status import ACTIVE_STATES, experiment_states

    slurm_ids, pids, count = [], [], 0
    for registry, specs in selected.items():
        submissions = manifest.load_submissions(registry)
        active = {s.spec.identity for s in experiment_states(specs, submissions) if s.state in ACTIVE_STATES}
        if not active:
            continue
        count += len(active)
        for identity, (_, array, task) in manifest.latest_tasks(submissions).items():
            if identity not in active:
                continue
            if array.backend == "slurm":
                whole = all(t.identity in active for t in array.tasks)
                slurm_ids.append(array.job_id if whole else array.task_job_id(task))
            elif array.backend == "local":
                if not all(t.identity in active for t in array.tasks):
                    raise UsageError(f"local job {array.job_id} can only be cancelled whole; select all of "
                                     f"its {len(array.tasks)} experiments (e.g. by its job id)")
                pids.append(array.job_id)
    return sorted(set(slurm_ids)), sorted(set(pids)), count


def stop_local(pids) -> None:
    """SIGTERM to a local job's controller: its runner lets the trainers checkpoint, then stops."""
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


def run(args) -> int:
    selected = select(args.selector, args.registry_module)
    slurm_ids, pids, count = targets(selected)
    console = fmt.console()
    if not count:
        console.print(f"nothing to cancel: no experiment selected by {args.selector!r} is queued or running")
        return 0
    jobs = slurm_ids + [f"local pid {pid}" for pid in pids]
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"would cancel {count} experiments ({', '.join(jobs)}); pass -y to confirm without a prompt")
        answer = input(f"Cancel {count} experiments ({', '.join(jobs)})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            console.print("nothing cancelled")
            return 1
    scheduler.cancel(slurm_ids)
    stop_local(pids)
    console.print(f"cancelled {count} experiments: {', '.join(jobs)}")
    return 0
