"""Cancel exactly what a selector names: whole arrays when all their tasks are selected.

Asks for confirmation with a count (-y skips it). Nothing is ever cancelled implicitly.
On Kubernetes the experiments' PyTorchJobs are deleted; their pods get the grace period to
checkpoint, and a run that had not started is marked cancelled in its run directory.
"""

from __future__ import annotations

import os
import signal
import sys

from orchestrator import fmt, scheduler
from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths
from orchestrator.selector import select


def add_arguments(parser) -> None:
    parser.add_argument("selector", help="registry, job id or label glob")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def targets(selected: dict) -> tuple[list[str], list[str], int, list]:
    """(slurm ids to scancel, local runner pids, experiments, kubernetes statuses) for the
    active selected experiments."""
    from orchestrator.status import ACTIVE_STATES, experiment_states_of

    active = [s for statuses in experiment_states_of(selected).values() for s in statuses
              if s.state in ACTIVE_STATES and s.job_id and s.backend in ("slurm", "local", "kubernetes")]
    pytorchjobs = [s for s in active if s.backend == "kubernetes"]  # one job per experiment: no arrays
    per_array: dict[str, list] = {}
    for status in (s for s in active if s.backend != "kubernetes"):
        per_array.setdefault(f"{status.backend}:{scheduler.array_of(status.job_id)}", []).append(status)
    slurm_ids, pids = [], []
    for statuses in per_array.values():
        attempt = statuses[0].attempt
        whole = attempt is not None and len({s.spec.run_name for s in statuses}) >= attempt.array_tasks
        if statuses[0].backend == "local":
            if not whole:
                raise UsageError(f"local job {attempt.job_id} can only be cancelled whole; select all of "
                                 f"its {attempt.array_tasks} experiments (e.g. by its job id)")
            pids.append(attempt.job_id)
        elif whole:
            slurm_ids.append(scheduler.array_of(statuses[0].job_id))
        else:
            slurm_ids += [s.job_id for s in statuses]
    return sorted(set(slurm_ids)), sorted(set(pids)), len(active), pytorchjobs


def stop_local(pids) -> None:
    """SIGTERM to a local job's controller: its runner lets the trainers checkpoint, then stops."""
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


def stop_pytorchjobs(statuses) -> None:
    """Delete the PyTorchJobs; a run that had not started is marked cancelled (Kubernetes keeps
    no record of a deleted job), one that had is left to say itself how it stopped."""
    if not statuses:
        return
    from orchestrator import kubernetes
    from orchestrator.task import mark

    kubernetes.delete((s.attempt.namespace, s.job_id) for s in statuses)
    for status in statuses:
        if status.state == "pending":
            mark(str(RunPaths.of(status.spec.folder_name, status.spec.label).run_dir / "spec.json"), "cancelled",
                 f"cancelled before it started (PyTorchJob {status.job_id} deleted)")


def run(args) -> int:
    selected = select(args.selector, args.registry_module)
    slurm_ids, pids, count, pytorchjobs = targets(selected)
    console = fmt.console()
    if not count:
        console.print(f"nothing to cancel: no experiment selected by {args.selector!r} is queued or running")
        return 0
    jobs = slurm_ids + [f"local pid {pid}" for pid in pids] + [f"pytorchjob/{s.job_id}" for s in pytorchjobs]
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"would cancel {count} experiments ({', '.join(jobs)}); pass -y to confirm without a prompt")
        answer = input(f"Cancel {count} experiments ({', '.join(jobs)})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            console.print("nothing cancelled")
            return 1
    scheduler.cancel(slurm_ids)
    stop_local(pids)
    stop_pytorchjobs(pytorchjobs)
    console.print(f"cancelled {count} experiments: {', '.join(jobs)}")
    return 0
