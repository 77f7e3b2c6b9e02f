"""The state of each experiment, from its run directory and the scheduler, never from memory.

Inputs: the run directory (``status.json`` written by the trainer, ``claim.json`` of the
live attempt, ``spec.json`` naming the latest submission of the directory from any
registry, the metrics CSV), the submission records (the registry's own, and those the run
directories point at, for the job ids), and one scheduler query for every registry asked
about.

Kubernetes (``orchestrator.kubernetes``): one list call per namespace for every PyTorchJob
of the submissions asked about, mapped from the job's conditions; the same precedence.

Precedence: a completed run on disk is completed whatever the scheduler says; a live
attempt (queued, running, requeued, or holding the run's claim) comes next; then how the
job ended, read from the run directory first and sacct second; a job the scheduler no
longer knows, past a grace period, whose run never finished is ``missing`` (never
"running" forever). Without accounting (sacct failing), states come from squeue and the
run directories alone, and the caller is told once.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from pathlib import Path

from orchestrator import claim, manifest, scheduler
from orchestrator.errors import note_once, report_unreadable
from orchestrator.manifest import Attempt
from orchestrator.paths import read_json, results_root
from orchestrator.spec import ExperimentSpec

STATES = ("not submitted", "pending", "running", "requeued", "preempted", "interrupted", "completed", "failed",
          "timeout", "cancelled", "diverged", "missing")
ACTIVE_STATES = frozenset({"pending", "running", "requeued", "preempted"})
RETRYABLE_STATES = frozenset({"failed", "timeout", "cancelled", "interrupted", "diverged", "missing"})
# sacct may list a task only seconds after it left the queue
SCHEDULER_GRACE_S = 120


@dataclasses.dataclass
class ExperimentStatus:
    spec: ExperimentSpec
    state: str
    job_id: str | None = None
    backend: str | None = None
    submitted: str | None = None
    registry: str | None = None  # whose submission the attempt is (may be another registry's)
    elapsed: str = ""
    optimizer_step: int | None = None
    tokens_processed: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    tokens_per_s: float | None = None
    reason: str = ""
    attempt: Attempt | None = dataclasses.field(default=None, repr=False)
    occupied_by: str = dataclasses.field(default="", repr=False)  # another experiment's live or finished run


    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("spec", "attempt", "occupied_by")}
        return {"label": self.spec.label, "folder_name": self.spec.folder_name,
                "identity": self.spec.identity, **data}


def disk_state(spec: ExperimentSpec, status: dict | None) -> str | None:
    """What the run directory says about *this* experiment (a stale run of another identity says nothing)."""
    if not status or status.get("identity") not in (None, spec.identity):
        return None
    return status.get("state")


def read_csv_tail(csv_path: Path) -> tuple[dict, str]:
    """(the last row of a metrics CSV, the file's problem or ""), read from the end (runs can be long).

    The problems are the ones ``analysis.loader`` reports, in the same words."""
    try:
        with open(csv_path, "rb") as handle:
            header = handle.readline().decode(errors="replace").strip().split(",")
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 8192))
            tail = handle.read()
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        return {}, f"unreadable CSV: {exc}"
    if size == 0:
        return {}, "empty file (not even a header)"
    if not tail.endswith(b"\n"):
        return {}, "truncated: the last line is incomplete"
    lines = tail.decode(errors="replace").strip().splitlines()
    if not lines or lines[-1].split(",") == header:
        return {}, ""
    values = lines[-1].split(",")
    if len(values) != len(header):
        return {}, f"malformed CSV: the last row has {len(values)} fields, the header {len(header)}"
    return dict(zip(header, values)), ""


def _number(value, kind=float):
    try:
        return kind(float(value)) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def log_tail(log_folder: str, job_id: str, lines: int = 3) -> str:
    """The last lines of a task's stderr (submitit names it ``<array>_<index>_0_log.err``)."""
    path = Path(log_folder) / f"{job_id}_0_log.err"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip() and "submitit" not in line]
    return " | ".join(kept[-lines:])


def _written_before(path: str, iso_time: str) -> bool:
    try:
        return os.stat(path).st_mtime < datetime.datetime.fromisoformat(iso_time).timestamp()
    except OSError:
        return False


def _age_s(iso_time: str) -> float:
    created = datetime.datetime.fromisoformat(iso_time)
    return (datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()


@dataclasses.dataclass
class _Run:
    """What one experiment's run directory and records say, before the scheduler is asked."""
    spec: ExperimentSpec
    status_json: str
    metrics_csv: str | None  # None: no CSV yet
    status: dict | None
    attempt: Attempt | None
    holder: dict | None


def _read_run(spec: ExperimentSpec, root: str, folders: dict, own: Attempt | None,
              records: manifest.Records) -> _Run:
    """Reads only the files that exist (one listing per run directory, one per results folder):
    status reads a thousand run directories, and every path object or failed open counts."""
    folder = os.path.join(root, spec.folder_name)
    if folder not in folders:
        try:
            folders[folder] = set(os.listdir(folder))
        except OSError:
            folders[folder] = set()
    run_dir = os.path.join(folder, spec.label)
    try:
        present = set(os.listdir(run_dir)) if spec.label in folders[folder] else set()
    except OSError:
        present = set()

    def read(name):
        return read_json(os.path.join(run_dir, name)) if name in present else None

    pointer = (read("spec.json") or {}).get("submission")
    csv_name = f"{spec.label}.csv"
    return _Run(spec, os.path.join(run_dir, "status.json"),
                os.path.join(folder, csv_name) if csv_name in folders[folder] else None,
                read("status.json"), _newest(records.attempt(pointer, spec.identity) if pointer else None, own),
                read("claim.json"))


def _latest_attempts(submissions: list[manifest.Submission]) -> dict[str, Attempt]:
    """identity -> the registry's own latest attempt, from its records (submitting ones too)."""
    latest: dict[str, Attempt] = {}
    for submission in submissions:
        for number, array in enumerate(submission.arrays):
            if not submission.holds(number) or (submission.state == "submitting"
                                                 and array.backend not in ("slurm", "kubernetes")):
                continue
            for task in array.tasks:
                latest[task.identity] = Attempt.of(submission, number, task)
    return latest


def _newest(*attempts: Attempt | None) -> Attempt | None:
    found = [a for a in attempts if a is not None]
    return max(found, key=lambda a: a.created) if found else None


def experiment_states_of(selected: dict[str, list[ExperimentSpec]],
                         submissions: dict[str, list[manifest.Submission]] | None = None,
                         ) -> dict[str, list[ExperimentStatus]]:
    """States of the selected experiments of several registries, with one scheduler query in all."""
    runs: dict[str, list[_Run]] = {}
    root, folders, known = str(results_root()), {}, manifest.Records()
    for registry, specs in selected.items():
        records = submissions[registry] if submissions is not None else manifest.load_submissions(registry)
        known.add(records)
        own = _latest_attempts(records)
        runs[registry] = [_read_run(spec, root, folders, own.get(spec.identity), known) for spec in specs]

    arrays, names, pytorchjobs = set(), set(), []
    for run in (r for group in runs.values() for r in group):
        if run.attempt and run.attempt.backend == "kubernetes":
            pytorchjobs.append(run.attempt)
        if run.attempt and run.attempt.backend == "slurm":
            names.add(run.attempt.name)
            if run.attempt.job_id:
                arrays.add(scheduler.array_of(run.attempt.job_id))
        if run.holder and claim.is_slurm_job(run.holder.get("job_id")) and run.holder.get("job_name"):
            names.add(run.holder["job_name"])
    view = scheduler.query(arrays, names) if names else scheduler.View()
    if view.accounting_error:
        note_once(f"sacct cannot answer ({view.accounting_error}): states come from squeue and the run "
                  "directories; how a job that left the queue ended is read from its run directory only")
    running_jobs = {job for job, info in view.queued.items() if info.state == "running"} if names else None
    if pytorchjobs:
        from orchestrator import kubernetes

        pytorchjobs = kubernetes.query(pytorchjobs)
    return {registry: [_state(run, view, running_jobs, pytorchjobs or {}) for run in group]
            for registry, group in runs.items()}


def experiment_states(specs: list[ExperimentSpec], submissions: list[manifest.Submission]) -> list[ExperimentStatus]:
    """States of one registry's experiments (see ``experiment_states_of``)."""
    return experiment_states_of({"": specs}, {"": submissions})[""]


def _state(run: _Run, view: scheduler.View, running_jobs: set[str] | None, pytorchjobs: dict) -> ExperimentStatus:
    spec, status, attempt = run.spec, run.status, run.attempt
    on_disk = disk_state(spec, status)
    entry = ExperimentStatus(spec=spec, state="not submitted")
    if attempt:
        if on_disk not in (None, "completed") and _written_before(run.status_json, attempt.created):
            on_disk = None  # how an earlier attempt ended says nothing about this one
        entry.backend, entry.submitted, entry.registry = attempt.backend, attempt.created, attempt.registry
        entry.job_id, entry.attempt = attempt.job_id, attempt
        if attempt.backend == "slurm":
            entry.state = _slurm_state(entry, attempt, view, on_disk, status)
        elif attempt.backend == "kubernetes":
            from orchestrator import kubernetes

            entry.state = kubernetes.state_of(entry, attempt, pytorchjobs, on_disk)
        else:
            entry.state = _local_state(attempt, on_disk)

    holder = run.holder if run.holder and run.holder.get("identity") in (None, spec.identity) else None
    other = status.get("identity") if status and status.get("identity") not in (None, spec.identity) else None
    if other and status.get("state") in ("completed", "diverged"):
        entry.occupied_by = f"experiment {other} ({status.get('state')})"
    elif run.holder and not holder and claim.holder_alive(run.holder, running_jobs):
        entry.occupied_by = f"experiment {run.holder.get('identity')}, trained by {claim.describe(run.holder)}"
    if holder and on_disk != "completed" and claim.holder_alive(holder, running_jobs):
        if holder.get("job_id") != entry.job_id or entry.state not in ACTIVE_STATES:
            entry.state, entry.job_id = "running", holder.get("job_id")
            entry.reason = f"trained by {claim.describe(holder)}"
    elif on_disk == "completed":
        entry.state = "completed"
    elif on_disk == "diverged" and entry.state not in ACTIVE_STATES:
        entry.state = "diverged"
    elif on_disk in ("failed", "cancelled", "interrupted", "timeout") and entry.state in ("not submitted", "missing"):
        entry.state = on_disk

    _metrics(entry, run.metrics_csv, status if on_disk else None)
    if not entry.elapsed:  # the local backend (and Slurm without accounting) has no scheduler to say it
        entry.elapsed = _elapsed(holder if entry.state == "running" else None, status if on_disk else None)
    if entry.state in RETRYABLE_STATES | {"requeued"} and not entry.reason and on_disk:
        entry.reason = (status or {}).get("reason") or (status or {}).get("error") or ""
    if entry.state == "running" and on_disk == "running" and (status or {}).get("reason") \
            and entry.optimizer_step is None:  # a trainer's warning while it runs (a command without metrics)
        entry.reason = status["reason"]
    if entry.state in RETRYABLE_STATES and not entry.reason and attempt and attempt.backend == "slurm" \
            and entry.job_id:
        entry.reason = log_tail(attempt.log_folder, entry.job_id)
    return entry


def _elapsed(holder: dict | None, status: dict | None) -> str:
    """H:MM:SS since a live claim started, or the training time a finished run recorded."""
    seconds = None
    if holder and holder.get("started"):
        try:
            seconds = _age_s(holder["started"])
        except (TypeError, ValueError):
            pass
    elif status:
        seconds = _number(status.get("elapsed_s"))
    if seconds is None or seconds < 0:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _metrics(entry: ExperimentStatus, csv_path: str | None, status: dict | None) -> None:
    """Progress from the CSV's last row; a finished run's numbers from its status.json."""
    row, problem = read_csv_tail(csv_path) if csv_path else ({}, "")
    entry.optimizer_step = _number(row.get("optimizer_step"), int)
    entry.tokens_processed = _number(row.get("tokens_processed"), int)
    entry.loss = _number(row.get("loss"))
    entry.val_loss = _number(row.get("val_loss"))
    entry.tokens_per_s = _number(row.get("tokens_per_s"))
    if entry.state == "completed" and status:
        for key in ("optimizer_step", "tokens_processed", "loss", "val_loss"):
            value = _number(status.get(key), int if key in ("optimizer_step", "tokens_processed") else float)
            if value is not None:
                setattr(entry, key, value)
    if problem:
        report_unreadable(csv_path, problem)
        entry.reason = f"{csv_path}: {problem}"
    elif entry.state == "completed" and row and _number(row.get("optimizer_step"), int) < entry.spec.optimizer_steps:
        entry.reason = (f"{csv_path}: ends at step {row.get('optimizer_step')} of {entry.spec.optimizer_steps} "
                        "although the run completed (truncated?)")
    if entry.state == "completed" and row and not math.isfinite(_number(row.get("loss")) or math.nan):
        entry.state, entry.reason = "diverged", f"{csv_path}: non-finite training loss in the CSV"


def _slurm_state(entry: ExperimentStatus, attempt: Attempt, view: scheduler.View, on_disk: str | None,
                 status: dict | None) -> str:
    job = attempt.job_id
    if job is None:  # sbatch ran but its answer was never recorded: find the jobs by name
        rows = view.by_name.get(attempt.name, [])
        match = [r for r in rows if r.job_id.endswith(f"_{attempt.index}")] or (rows if attempt.array_tasks == 1 else [])
        if not match:
            entry.reason = f"submission {attempt.submission} was interrupted; the next submit repairs it"
            return "not submitted"
        job = entry.job_id = match[0].job_id
        entry.reason = f"submission {attempt.submission} was interrupted; the next submit records and releases it"
    live = view.queued.get(job)
    if live:
        entry.elapsed = live.elapsed
        if live.state == "pending" and (live.restarts or on_disk == "interrupted"):
            return "requeued"
        return live.state
    if on_disk == "timeout":
        return "timeout"
    own = view.ended.get(job)
    if own:
        entry.elapsed = own.elapsed
        if own.state in ("completed", "failed") and on_disk == "interrupted":
            return "interrupted"  # stopped by a signal with a checkpoint, and not requeued
        if own.state == "completed" and on_disk != "completed":
            return "failed"  # the job ended but the run did not finish
        return own.state
    rest = view.ranges.get(job)
    if rest and rest.state in scheduler.FINAL_STATES:
        return rest.state
    if view.accounting_error is None:
        if scheduler.array_of(job) in view.known_arrays and on_disk is None:
            entry.reason = "cancelled while pending (Slurm keeps no record of a pending task cancelled alone)"
            return "cancelled"
        return "pending" if _age_s(attempt.created) < SCHEDULER_GRACE_S else "missing"
    if on_disk in ("interrupted", "failed", "cancelled", "diverged"):
        return on_disk
    entry.reason = ("left the queue while running; no accounting to say how it ended" if on_disk == "running"
                    else "not in the queue, and no accounting to say what happened to it")
    return "missing"


def _local_state(attempt: Attempt, on_disk: str | None) -> str:
    # local: the runner process is the job; the run directory tells the rest
    if attempt.backend == "local" and manifest.pid_alive(attempt.job_id):
        if on_disk == "interrupted":  # the runner restarts it at once, or marks it cancelled
            return "running"
        return "running" if on_disk == "running" else ("pending" if on_disk is None else on_disk)
    if on_disk in (None, "running"):
        return "missing"
    return on_disk


def summarize(statuses: list[ExperimentStatus]) -> dict[str, int]:
    counts = {state: 0 for state in STATES}
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    return {state: n for state, n in counts.items() if n}


def to_json(statuses: list[ExperimentStatus]) -> str:
    return json.dumps([s.to_dict() for s in statuses], indent=2)
