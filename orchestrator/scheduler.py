"""Talking to Slurm's command-line tools: one batched call per question, never one per job.

The queue of live jobs comes from ``squeue`` (immediate), finished jobs from ``sacct``
(which lags: a task can be in neither for a few seconds after it leaves the queue, so
callers give it a grace period before calling it missing).
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


@dataclasses.dataclass
class TaskInfo:
    job_id: str        # "<array id>_<index>" for array tasks
    state: str         # our state name (see SLURM_STATES)
    raw_state: str     # Slurm's, e.g. "CANCELLED by 0"
    elapsed: str = ""
    exit_code: str = ""


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
        raise SchedulerError(f"{' '.join(cmd[:2])} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def our_state(raw: str) -> str:
    return SLURM_STATES.get(raw.split()[0].rstrip("+"), "unknown") if raw else "unknown"


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


def query(array_ids: Iterable[str]) -> dict[str, TaskInfo]:
    """State of every task of the given arrays: one ``sacct`` plus one ``squeue`` call.

    squeue wins for live tasks (sacct lags behind it by seconds); sacct tells how
    finished tasks ended. Tasks found in neither are absent from the result.
    """
    ids = sorted(set(array_ids))
    if not ids:
        return {}
    joined = ",".join(ids)
    tasks: dict[str, TaskInfo] = {}
    out = _run(["sacct", "-X", "-P", "-n", "-o", "JobID,State,Elapsed,ExitCode", "-j", joined])
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) < 4:
            continue
        for job_id in expand_array_ids(fields[0]):
            tasks[job_id] = TaskInfo(job_id, our_state(fields[1]), fields[1], fields[2], fields[3])
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T|%M", "-j", joined])
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) < 3:
            continue
        for job_id in expand_array_ids(fields[0]):
            known = tasks.get(job_id)
            tasks[job_id] = TaskInfo(job_id, our_state(fields[1]), fields[1], fields[2],
                                     known.exit_code if known else "")
    return tasks


def find_jobs_by_name(name: str) -> list[str]:
    """Array ids of jobs with this name, queued or finished (repairs an unrecorded sbatch)."""
    out = _run(["sacct", "-X", "-P", "-n", "-S", "now-7days", "-o", "JobID", "--name", name])
    out += _run(["squeue", "-h", "-o", "%F", "--name", name])
    return sorted({line.split("_")[0].strip() for line in out.splitlines() if line.strip()})


@functools.lru_cache(maxsize=None)
def max_array_size() -> int:
    """The cluster's MaxArraySize: array indices must be below it."""
    out = _run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else 1001


def cancel(job_ids: Iterable[str]) -> None:
    ids = sorted(set(job_ids))
    if ids:
        _run(["scancel", *ids])


def check_partition(name: str) -> None:
    """The partition exists on this cluster (sbatch would only fail later, per array)."""
    out = _run(["sinfo", "-h", "-o", "%R"])
    partitions = {line.strip() for line in out.splitlines() if line.strip()}
    if partitions and name not in partitions:
        raise UsageError(f"partition {name!r} is not on this cluster; it has: {', '.join(sorted(partitions))}")
