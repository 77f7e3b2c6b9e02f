"""Talking to Slurm's command-line tools: one batched call per question, never one per job.

The queue of live jobs comes from ``squeue`` (immediate), how finished jobs ended from
``sacct`` (which lags: a task can be in neither for a few seconds after it leaves the
queue, so callers give it a grace period before calling it missing).

Quirks handled here and nowhere else:

- ``squeue -j ID`` exits 1 ("Invalid job id specified") when it names a single job that
  slurmctld has forgotten (``MinJobAge``, 300 s by default). The queue is asked by job
  *name* instead, which never fails on a forgotten job.
- ``sacct`` needs slurmdbd. When it cannot answer (accounting disabled, slurmdbd down),
  the view says so and callers work from the queue and the run directories.
- sacct keeps the not-yet-started rest of an array as one range row
  (``101_[2-3%2] PENDING``, later ``CANCELLED``). A range row speaks only for the tasks it
  names, and never over a task's own row. A pending task cancelled on its own leaves no
  row at all: it is gone from the queue while its array is still known.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import subprocess
from typing import Iterable

from orchestrator.errors import UsageError

# Slurm state -> our state for a task that has not written a final status itself
SLURM_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running", "STAGE_OUT": "running",
    "RESIZING": "running", "SIGNALING": "running",
    "REQUEUED": "requeued", "PREEMPTED": "preempted",
    "COMPLETED": "completed", "FAILED": "failed", "OUT_OF_MEMORY": "failed", "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed", "DEADLINE": "timeout", "TIMEOUT": "timeout", "CANCELLED": "cancelled",
    "REVOKED": "cancelled", "SPECIAL_EXIT": "failed",
}
FINAL_STATES = frozenset({"completed", "failed", "timeout", "cancelled"})
SQUEUE_FIELDS = ("JobArrayID", "State", "TimeUsed", "Name", "Reason", "RestartCnt")


@dataclasses.dataclass
class TaskInfo:
    job_id: str        # "<array id>_<index>" for array tasks
    state: str         # our state name (see SLURM_STATES)
    raw_state: str     # Slurm's, e.g. "CANCELLED by 0"
    elapsed: str = ""
    exit_code: str = ""
    reason: str = ""   # squeue's: why a pending job waits (JobHeldUser, BeginTime, ...)
    restarts: int = 0  # requeues so far (squeue)
    name: str = ""


@dataclasses.dataclass
class View:
    """What the scheduler says about a set of jobs, from one sacct and one squeue call."""
    queued: dict[str, TaskInfo] = dataclasses.field(default_factory=dict)    # squeue: live tasks
    ended: dict[str, TaskInfo] = dataclasses.field(default_factory=dict)     # sacct: a task's own row
    ranges: dict[str, TaskInfo] = dataclasses.field(default_factory=dict)    # sacct: range rows, per task
    by_name: dict[str, list[TaskInfo]] = dataclasses.field(default_factory=dict)  # squeue rows by job name
    known_arrays: set[str] = dataclasses.field(default_factory=set)          # arrays sacct or squeue know
    accounting_error: str | None = None  # why sacct could not answer; None when it did


class SchedulerError(RuntimeError):
    pass


def available() -> bool:
    return shutil.which("sbatch") is not None


def _run(cmd: list[str], timeout_s: float = 60) -> str:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise SchedulerError(f"{cmd[0]} not found: is Slurm installed on this machine?") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{cmd[0]} did not answer within {timeout_s:.0f} s") from None
    if result.returncode:
        raise SchedulerError(f"{' '.join(cmd[:2])} failed: {_message(result.stderr or result.stdout)}")
    return result.stdout


def _message(text: str) -> str:
    """Slurm's last error line, without the tool's prefix (sacct prints three for one cause)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    return re.sub(r"^\w+: error: ", "", last)


def our_state(raw: str) -> str:
    return SLURM_STATES.get(raw.split()[0].rstrip("+"), "unknown") if raw else "unknown"


def array_of(job_id: str) -> str:
    return job_id.split("_")[0]


def expand_array_ids(job_id: str) -> list[str]:
    """``12_[0-2,5%2]`` -> ``['12_0', '12_1', '12_2', '12_5']``; other ids unchanged."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    base, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        start, _, stop = part.partition("-")
        ids += [f"{base}_{i}" for i in range(int(start), int(stop or start) + 1)]
    return ids


def query(array_ids: Iterable[str], names: Iterable[str]) -> View:
    """One ``sacct`` for the arrays' history and one ``squeue`` for the live jobs with these names."""
    view = View()
    ids = sorted(set(array_ids))
    if ids:
        try:
            out = _run(["sacct", "-X", "-P", "-n", "-o", "JobID,State,Elapsed,ExitCode", "-j", ",".join(ids)])
        except SchedulerError as exc:
            view.accounting_error = str(exc).partition(": ")[2] or str(exc)
        else:
            _read_sacct(out, view)
    wanted = sorted(set(names))
    if wanted:
        out = _run(["squeue", "-h", "-r", "--name", ",".join(wanted), "-O",
                    ",".join(f"{field}:|" for field in SQUEUE_FIELDS)])
        for line in out.splitlines():
            fields = line.split("|")
            if len(fields) < len(SQUEUE_FIELDS):
                continue
            job_id, raw, elapsed, name, reason, restarts = (f.strip() for f in fields[:len(SQUEUE_FIELDS)])
            for task_id in expand_array_ids(job_id):
                known = view.ended.get(task_id)
                info = TaskInfo(task_id, our_state(raw), raw, elapsed, known.exit_code if known else "",
                                reason, int(restarts) if restarts.isdigit() else 0, name)
                view.queued[task_id] = info
                view.by_name.setdefault(name, []).append(info)
                view.known_arrays.add(array_of(task_id))
    return view


def _read_sacct(out: str, view: View) -> None:
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) < 4:
            continue
        job_id, raw, elapsed, exit_code = fields[:4]
        view.known_arrays.add(array_of(job_id))
        tasks = expand_array_ids(job_id)
        target = view.ranges if len(tasks) > 1 or "[" in job_id else view.ended
        for task_id in tasks:
            target[task_id] = TaskInfo(task_id, our_state(raw), raw, elapsed, exit_code)


def find_jobs_by_name(name: str) -> list[str]:
    """Array ids of jobs with this name, queued or finished (repairs an unrecorded sbatch)."""
    found = _run(["squeue", "-h", "-o", "%F", "--name", name])
    try:
        found += _run(["sacct", "-X", "-P", "-n", "-S", "now-7days", "-o", "JobID", "--name", name])
    except SchedulerError:
        pass  # no accounting: a job that already left the queue cannot be found anyway
    return sorted({array_of(line.strip()) for line in found.splitlines() if line.strip()})


DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default


@functools.lru_cache(maxsize=None)
def max_array_size() -> int:
    """The cluster's MaxArraySize: array indices must be below it."""
    out = _run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def cancel(job_ids: Iterable[str]) -> None:
    ids = sorted(set(job_ids))
    if ids:
        _run(["scancel", *ids])


def release(job_ids: Iterable[str], finished_ok: bool = False) -> None:
    """Let held jobs start (arrays are submitted held until their record is written).

    ``finished_ok``: a job that already ended (a repair that comes late) is not an error."""
    ids = sorted(set(job_ids))
    if not ids:
        return
    try:
        _run(["scontrol", "release", ",".join(ids)])
    except SchedulerError as exc:
        if not (finished_ok and ("already finished" in str(exc) or "Invalid job id" in str(exc))):
            raise


def first_line(text: str) -> str:
    """The message of a multi-line error from a Slurm tool (sbatch's own words)."""
    return _message(text)


@dataclasses.dataclass(frozen=True)
class NodeLimits:
    """The largest node of a partition: what one single-node job can ask for."""
    partition: str
    cpus: int
    mem_gb: float
    gpus: int


@functools.lru_cache(maxsize=None)
def partition_limits() -> dict[str, NodeLimits]:
    """Per partition, the biggest node's CPUs, memory and GPUs (one ``sinfo`` call)."""
    out = _run(["sinfo", "-h", "-N", "-o", "%R|%c|%m|%G"])
    limits: dict[str, NodeLimits] = {}
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 4:
            continue
        partition, cpus, mem_mb, gres = fields[:4]
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres))
        node = NodeLimits(partition, _int(cpus), _int(mem_mb) / 1024, gpus)
        old = limits.get(partition)
        if old is None or (node.gpus, node.cpus, node.mem_gb) > (old.gpus, old.cpus, old.mem_gb):
            limits[partition] = node
    return limits


def _int(text: str) -> int:
    digits = re.match(r"\d+", text.strip())
    return int(digits.group(0)) if digits else 0


def check_resources(partition: str, gpus: int, cpus: int, mem_gb: float, what: str) -> None:
    """Refuse what no node of the partition can give (sbatch would queue it forever or fail late)."""
    limits = partition_limits()
    if partition not in limits:
        raise UsageError(f"partition {partition!r} is not on this cluster; it has: {', '.join(sorted(limits))}")
    node = limits[partition]
    for asked, has, unit in ((gpus, node.gpus, "GPUs"), (cpus, node.cpus, "CPUs"), (mem_gb, node.mem_gb, "GB of memory")):
        if asked > has:
            raise UsageError(f"{what} asks for {asked:g} {unit}, but the largest node of partition {partition!r} "
                             f"has {has:g}")
