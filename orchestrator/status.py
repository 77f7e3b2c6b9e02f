"""The state of each experiment, from its run directory and the scheduler, never from memory.

Inputs: the run directory (``status.json`` written by the trainer, the metrics CSV), the
submission records, and one batched scheduler query. Precedence: a completed run on
disk is completed whatever the scheduler says; a live job (pending, running, requeued)
comes next; then how the job ended; a job the scheduler no longer knows, past a grace
period, whose run never finished is ``missing`` (never "running" forever).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

from orchestrator import manifest, scheduler
from orchestrator.paths import RunPaths, read_status
from orchestrator.spec import ExperimentSpec

STATES = ("not submitted", "pending", "running", "requeued", "preempted", "completed", "failed", "timeout",
          "cancelled", "diverged", "missing")
ACTIVE_STATES = frozenset({"pending", "running", "requeued", "preempted"})
RETRYABLE_STATES = frozenset({"failed", "timeout", "cancelled", "diverged", "missing"})
# sacct may list a task only seconds after it left the queue
SCHEDULER_GRACE_S = 120


@dataclasses.dataclass
class ExperimentStatus:
    spec: ExperimentSpec
    state: str
    job_id: str | None = None
    backend: str | None = None
    submitted: str | None = None
    elapsed: str = ""
    optimizer_step: int | None = None
    tokens_processed: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    tokens_per_s: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("spec")
        return {"label": self.spec.label, "folder_name": self.spec.folder_name,
                "identity": self.spec.identity, **data}


def disk_state(spec: ExperimentSpec, status: dict | None) -> str | None:
    """What the run directory says about *this* experiment (a stale run of another identity says nothing)."""
    if not status or status.get("identity") not in (None, spec.identity):
        return None
    return status.get("state")


def last_metrics(csv_path: Path) -> dict:
    """The last row of a metrics CSV, read from the end of the file (runs can be long)."""
    try:
        with open(csv_path, "rb") as handle:
            header = handle.readline().decode().strip().split(",")
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 8192))
            lines = handle.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return {}
    if not lines or len(lines[-1].split(",")) != len(header) or lines[-1].split(",") == header:
        return {}
    return dict(zip(header, lines[-1].split(",")))


def _number(value, kind=float):
    try:
        return kind(float(value)) if value not in (None, "") else None
    except ValueError:
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


def _written_before(path: Path, iso_time: str) -> bool:
    try:
        return path.stat().st_mtime < datetime.datetime.fromisoformat(iso_time).timestamp()
    except OSError:
        return False


def _age_s(iso_time: str) -> float:
    created = datetime.datetime.fromisoformat(iso_time)
    return (datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()


def experiment_states(specs: list[ExperimentSpec], submissions: list[manifest.Submission]) -> list[ExperimentStatus]:
    latest = manifest.latest_tasks(submissions)
    slurm_arrays = {array.job_id for _, array, _ in latest.values() if array.backend == "slurm" and array.job_id}
    tasks = scheduler.query(slurm_arrays) if slurm_arrays else {}
    results = []
    for spec in specs:
        paths = RunPaths.of(spec.folder_name, spec.label)
        status = read_status(paths)
        on_disk = disk_state(spec, status)
        entry = ExperimentStatus(spec=spec, state="not submitted")
        record = latest.get(spec.identity)
        if record:
            submission, array, task = record
            if on_disk not in (None, "completed") and _written_before(paths.status_json, submission.created):
                on_disk = None  # how an earlier attempt ended says nothing about this one
            entry.backend, entry.submitted = array.backend, submission.created
            entry.job_id = array.task_job_id(task) if array.backend == "slurm" else array.job_id
            entry.state = _job_state(entry, array, tasks, on_disk, _age_s(submission.created))
        if on_disk == "completed":
            entry.state = "completed"
        elif on_disk == "diverged" and entry.state not in ACTIVE_STATES:
            entry.state = "diverged"
        elif on_disk in ("failed", "cancelled") and entry.state in ("not submitted", "missing"):
            entry.state = on_disk
        metrics = last_metrics(paths.metrics_csv)
        entry.optimizer_step = _number(metrics.get("optimizer_step"), int)
        entry.tokens_processed = _number(metrics.get("tokens_processed"), int)
        entry.loss = _number(metrics.get("loss"))
        entry.val_loss = _number(metrics.get("val_loss"))
        entry.tokens_per_s = _number(metrics.get("tokens_per_s"))
        if entry.state in RETRYABLE_STATES - {"cancelled"}:
            entry.reason = (status or {}).get("error") or ""
            if not entry.reason and record and record[1].backend == "slurm":
                entry.reason = log_tail(record[1].log_folder, entry.job_id)
        results.append(entry)
    return results


def _job_state(entry: ExperimentStatus, array: manifest.ArrayRecord, tasks: dict, on_disk: str | None,
               age_s: float) -> str:
    if array.backend == "slurm":
        info = tasks.get(entry.job_id)
        if info is None:
            return "pending" if age_s < SCHEDULER_GRACE_S else "missing"
        entry.elapsed = info.elapsed
        if info.state == "completed" and on_disk != "completed":
            # the job ended but the run did not finish (a stop request, a crash after the trainer)
            return "failed"
        return info.state
    # local: the runner process is the job; the run directory tells the rest
    if manifest.pid_alive(array.job_id):
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
