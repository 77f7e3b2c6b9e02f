"""One run directory, one live attempt: the claim an attempt takes before it touches anything.

``claim.json`` in the run directory names the attempt that trains it: its job id (Slurm's
``<array>_<index>``, a local job's id, or ``pid<N>`` by hand), job name, host, pid, start
time, and ``refreshed``, rewritten every ``REFRESH_S`` while the attempt runs. Taking and
releasing it are check-and-set under an flock of ``.claim.lock`` next to it, so two attempts
racing for one directory (the same experiment in two registries, a resubmit while a job
still runs) cannot both win: the second exits without writing and says why in its log.

A claim whose holder is gone is taken over. Gone means: on this host, its process is dead
(pid and process start time, so a reused pid does not count); elsewhere, its Slurm job is
no longer running or, failing that, it has not been refreshed for ``STALE_S``. The same job
id taking the claim again is a requeued or restarted attempt of the holder itself.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, Mapping

from orchestrator import manifest
from orchestrator.paths import RunPaths, atomic_write_json, read_json

REFRESH_S = 30.0
STALE_S = 300.0  # a claim not refreshed for this long has lost its holder
HOST = socket.gethostname()


class ClaimHeld(RuntimeError):
    """Another live attempt trains this run directory."""

    def __init__(self, paths: RunPaths, holder: dict):
        self.holder = holder
        super().__init__(f"{paths.run_dir} is being trained by {describe(holder)}; this attempt "
                         f"({attempt_id()}) exits without touching it")


def describe(holder: dict) -> str:
    return (f"job {holder.get('job_id')} (host {holder.get('host')}, pid {holder.get('pid')}, "
            f"since {holder.get('started')})")


def attempt_id(environ: Mapping[str, str] | None = None) -> str:
    """This process's job id, in the form submission records use."""
    environ = os.environ if environ is None else environ
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID") or environ.get("ORCHESTRATOR_JOB_ID") or f"pid{os.getpid()}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def age_s(holder: dict) -> float:
    try:
        refreshed = datetime.datetime.fromisoformat(holder["refreshed"])
    except (KeyError, TypeError, ValueError):
        return float("inf")
    return (datetime.datetime.now(datetime.timezone.utc) - refreshed).total_seconds()


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def _process_alive(pid, started) -> bool:
    """Alive (not a zombie), and the same process that took the claim: a reused pid is not."""
    if not isinstance(pid, int) or not manifest.pid_alive(str(pid)):
        return False
    return started is None or process_start(pid) == started


def is_slurm_job(job_id) -> bool:
    return isinstance(job_id, str) and re.fullmatch(r"\d+(_\d+)?", job_id) is not None


def slurm_job_running(job_id: str) -> bool | None:
    """Whether Slurm still runs this job; None when Slurm cannot be asked."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:  # a job slurmctld has forgotten is "invalid": it is not running
        return False if "Invalid job id" in out.stderr else None
    return any(line.strip() in ("RUNNING", "COMPLETING", "SUSPENDED") for line in out.stdout.splitlines())


def holder_alive(holder: dict | None, running_jobs: set[str] | None = None) -> bool:
    """Whether the claim's attempt still runs. ``running_jobs``: Slurm jobs known to run now
    (a caller that has asked the queue already); None asks Slurm when it must."""
    if not holder:
        return False
    if holder.get("host") == HOST:
        return _process_alive(holder.get("pid"), holder.get("pid_start"))
    job_id = holder.get("job_id")
    if is_slurm_job(job_id):
        running = (job_id in running_jobs) if running_jobs is not None else slurm_job_running(job_id)
        if running is not None:
            return running
    return age_s(holder) < STALE_S


@contextlib.contextmanager
def _locked(paths: RunPaths) -> Iterator[None]:
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.run_dir / ".claim.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def acquire(paths: RunPaths, identity: str) -> dict:
    """Take the run directory for this attempt, or raise ``ClaimHeld``."""
    mine = {"job_id": attempt_id(), "job_name": os.environ.get("SLURM_JOB_NAME", ""), "host": HOST,
            "pid": os.getpid(), "pid_start": process_start(os.getpid()), "started": _now(), "refreshed": _now(),
            "identity": identity, "token": secrets.token_hex(8)}
    with _locked(paths):
        holder = read_json(paths.claim_json)
        if holder and holder.get("job_id") != mine["job_id"] and holder_alive(holder):
            raise ClaimHeld(paths, holder)
        if holder:
            print(f"taking over {paths.claim_json} from {describe(holder)}, which is gone", file=sys.stderr)
        atomic_write_json(paths.claim_json, mine)
    return mine


def read(paths: RunPaths) -> dict | None:
    return read_json(paths.claim_json)


def _still_mine(paths: RunPaths, mine: dict) -> bool:
    holder = read_json(paths.claim_json)
    return bool(holder) and holder.get("token") == mine["token"]


def refresh(paths: RunPaths, mine: dict) -> bool:
    """Rewrite ``refreshed``; False once another attempt has taken the claim over."""
    with _locked(paths):
        if not _still_mine(paths, mine):
            return False
        mine["refreshed"] = _now()
        atomic_write_json(paths.claim_json, mine)
        return True


def release(paths: RunPaths, mine: dict) -> None:
    with _locked(paths):
        if _still_mine(paths, mine):
            paths.claim_json.unlink(missing_ok=True)


@contextlib.contextmanager
def holding(paths: RunPaths, identity: str, refresh_s: float = REFRESH_S) -> Iterator[dict]:
    """Hold the claim for the duration (refreshed from a daemon thread); ``ClaimHeld`` if taken."""
    mine = acquire(paths, identity)
    stop = threading.Event()

    def beat():
        while not stop.wait(refresh_s):
            try:
                if not refresh(paths, mine):
                    print(f"warning: {paths.claim_json} was taken over by another attempt", file=sys.stderr)
                    return
            except OSError as exc:  # a filesystem hiccup must not kill the run; the next beat retries
                print(f"warning: could not refresh {paths.claim_json}: {exc}", file=sys.stderr)

    thread = threading.Thread(target=beat, name="claim-heartbeat", daemon=True)
    thread.start()
    try:
        yield mine
    finally:
        stop.set()
        thread.join(timeout=5)
        release(paths, mine)
