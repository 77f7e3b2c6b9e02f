"""Submission records: what was submitted, when, as which job, for which experiment.

One JSON file per ``submit`` call, next to the results so any later shell (or another
machine on the shared filesystem) can read it:

    <results>/_submissions/<REGISTRY>/<submission id>.json
    <results>/_submissions/.lock        held while any submit plans and submits

A record is written with ``state: "submitting"`` before sbatch is called and rewritten
with the job ids (``"submitted"``) right after; Slurm arrays are submitted held and
released only then. A record left in "submitting" means the process died in between:
the next call looks the jobs up by their unique name, puts submitit's job pickles in
place, records and releases them, or marks the record "abandoned" when sbatch never ran.

Each run directory's ``spec.json`` also points at its latest submission, from whichever
registry (``Attempt``), so every registry sees who trains the directory. A record that
cannot be read is reported once by path and skipped; it is never deleted or rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from orchestrator.errors import report_unreadable
from orchestrator.paths import atomic_write_json, results_root


@dataclasses.dataclass
class TaskRecord:
    index: int          # array index
    identity: str
    label: str
    folder_name: str
    spec_path: str
    job_id: str | None = None  # the scheduler's id of this task ("<array>_<index>", or "<id>" alone)


@dataclasses.dataclass
class ArrayRecord:
    name: str                  # unique Slurm job name, used to find the job if unrecorded
    backend: str
    resources: dict
    parallel: int
    log_folder: str            # submitit's folder for this array (pickles, stdout/stderr)
    tasks: list[TaskRecord]
    job_id: str | None = None  # the array's id (slurm) or the runner's pid (local)
    max_requeues: int = 3
    code_dir: str | None = None  # the code snapshot the jobs run (None: the installed code)
    namespace: str | None = None  # kubernetes: where its PyTorchJob is

    def task_job_id(self, task: TaskRecord) -> str:
        return task.job_id or f"{self.job_id}_{task.index}"


@dataclasses.dataclass
class Submission:
    id: str
    registry: str
    created: str
    command: str
    git_commit: str | None
    git_dirty: bool | None
    arrays: list[ArrayRecord]
    state: str = "submitting"  # -> submitted | abandoned

    @property
    def path(self) -> Path:
        return submissions_dir(self.registry) / f"{self.id}.json"

    def save(self) -> None:
        atomic_write_json(self.path, self.to_dict(), compact=True)

    def to_dict(self) -> dict:
        # vars(), not dataclasses.asdict: no deep copy of a thousand tasks per save
        return {**vars(self), "arrays": [{**vars(a), "tasks": [vars(t) for t in a.tasks]} for a in self.arrays]}

    @classmethod
    def load(cls, path: Path) -> Submission:
        data = json.loads(Path(path).read_bytes())
        arrays = [ArrayRecord(**{**a, "tasks": [TaskRecord(**t) for t in a["tasks"]]}) for a in data.pop("arrays")]
        return cls(**data, arrays=arrays)

    def holds(self, number: int) -> bool:
        """Whether array ``number`` stands for jobs: submitted, or sbatch's answer not recorded yet."""
        if not 0 <= number < len(self.arrays):
            return False
        return self.state == "submitting" or (self.state == "submitted" and bool(self.arrays[number].job_id))

    @property
    def folder(self) -> Path:
        """Where this submission's logs and code snapshot live."""
        return Path(self.arrays[0].log_folder).parent if self.arrays else submissions_dir(self.registry)


@dataclasses.dataclass
class Attempt:
    """One task of a submission: what was asked of a scheduler for one run directory.

    The run directory's ``spec.json`` points at its latest one (``{"submission": {"registry",
    "id", "array", "index"}}``, written with the spec, before sbatch), so every registry sees
    who trains the directory; the job ids come from the record it points at."""
    registry: str
    submission: str
    created: str
    backend: str
    name: str                  # the array's unique job name
    log_folder: str
    array: int                 # the array's number in its submission
    index: int                 # array index of the task
    array_tasks: int
    identity: str
    job_id: str | None = None  # the task's job id; None until sbatch's answer is recorded
    namespace: str | None = None  # kubernetes: where its PyTorchJob is

    @classmethod
    def of(cls, submission: Submission, number: int, task: TaskRecord) -> Attempt:
        array = submission.arrays[number]
        job_id = None
        if array.job_id:
            job_id = array.task_job_id(task) if array.backend == "slurm" else array.job_id
        return cls(submission.registry, submission.id, submission.created, array.backend, array.name,
                   array.log_folder, number, task.index, len(array.tasks), task.identity, job_id, array.namespace)

    @staticmethod
    def pointer(submission: Submission, number: int, task: TaskRecord) -> dict:
        return {"registry": submission.registry, "id": submission.id, "array": number, "index": task.index}


class Records:
    """Submission records by (registry, id), each read once, for resolving run directories' pointers."""

    def __init__(self):
        self._loaded: dict[tuple[str, str], Submission | None] = {}

    def add(self, submissions: list[Submission]) -> None:
        for submission in submissions:
            self._loaded[(submission.registry, submission.id)] = submission

    def attempt(self, pointer, identity: str) -> Attempt | None:
        """The attempt a spec.json pointer names, if its record exists and is about ``identity``."""
        try:
            key, number, index = (pointer["registry"], pointer["id"]), int(pointer["array"]), int(pointer["index"])
        except (TypeError, KeyError, ValueError):
            return None
        if key not in self._loaded:
            path = submissions_dir(key[0]) / f"{key[1]}.json"
            self._loaded[key] = _load_or_report(path) if path.exists() else None  # gone: sbatch failed
        submission = self._loaded[key]
        if submission is None or not submission.holds(number):
            return None
        tasks = submission.arrays[number].tasks
        task = tasks[index] if 0 <= index < len(tasks) and tasks[index].index == index else None
        if task is None or task.identity != identity:
            return None
        return Attempt.of(submission, number, task)


def submissions_dir(registry: str | None = None) -> Path:
    base = results_root() / "_submissions"
    return base / registry if registry else base


def new_submission(registry: str, arrays: list[ArrayRecord]) -> Submission:
    now = datetime.datetime.now(datetime.timezone.utc)
    commit, dirty = git_state()
    return Submission(
        id=f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}", registry=registry, created=now.isoformat(),
        command=shlex.join([Path(sys.executable).name, "-m", "orchestrator", *sys.argv[1:]]),
        git_commit=commit, git_dirty=dirty, arrays=arrays)


def load_submissions(registry: str | None = None) -> list[Submission]:
    """Records of one registry (or of all), oldest first; unreadable ones are reported and skipped."""
    base = submissions_dir()
    if not base.is_dir():
        return []
    pattern = f"{registry}/*.json" if registry else "*/*.json"
    records = [_load_or_report(path) for path in sorted(base.glob(pattern), key=lambda p: p.name)]
    return [record for record in records if record is not None]


def _load_or_report(path: Path) -> Submission | None:
    try:
        return Submission.load(path)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        report_unreadable(path, f"not a submission record ({type(exc).__name__}: {exc})")
        return None


@contextlib.contextmanager
def submit_lock() -> Iterator[None]:
    """Exclusive while held: two submits (of one registry, or of two that share a run
    directory) never plan from the same state. One hidden file for all registries, kept:
    removing a lock file after use races with the next process that opens it."""
    path = submissions_dir() / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another submit to finish ...", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the code being submitted, or (None, None) outside a git checkout."""
    where = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode:
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return None, None


def pid_alive(pid: str | None) -> bool:
    if not pid or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
