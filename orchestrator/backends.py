"""How an array of tasks is handed to something that runs it.

- ``slurm``: submitit's SlurmExecutor, one job array per resource group (``map_array``).
- ``local``: submitit's LocalExecutor runs one job per array on this machine, which runs
  the tasks a few at a time (``orchestrator.task.run_local_array``). The embedded default
  when there is no ``sbatch`` on PATH.
- ``debug``: in this process, one task after the other, so breakpoints work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

from orchestrator.errors import UsageError, unknown
from orchestrator.profiles import Profile

BACKENDS = ("auto", "slurm", "local", "debug")


def resolve_backend(name: str, partitions=()) -> tuple[str, str]:
    """(backend, why). auto: local for local-only partitions or without sbatch, else slurm."""
    from orchestrator.profiles import get_profile

    if name not in BACKENDS:
        raise unknown("backend", name, BACKENDS)
    if name == "auto":
        if not shutil.which("sbatch"):
            return "local", "auto: no sbatch on PATH"
        if partitions and all(get_profile(p).backend == "local" for p in partitions):
            return "local", "auto: only local partitions"
        return "slurm", "auto: sbatch found"
    if name == "slurm" and not shutil.which("sbatch"):
        raise UsageError("backend 'slurm' needs sbatch on PATH; use --backend local to run on this machine")
    return name, "requested"


def slurm_parameters(profile: Profile, resources: dict, parallel: int, name: str, max_requeues: int) -> dict:
    """submitit SlurmExecutor parameters for one array: one task per GPU on one node."""
    gpus = resources["gpus"]
    params = {
        "partition": profile.name,
        "job_name": name,
        "time": resources["time_min"],
        "mem": f"{resources['mem_gb']}GB",
        "cpus_per_task": resources["cpus_per_gpu"],
        "nodes": 1,
        "ntasks_per_node": gpus,
        "array_parallelism": parallel,
        "signal_delay_s": 90,
    }
    if profile.account:
        params["account"] = profile.account
    if profile.gpu_request == "gres":
        params["gres"] = f"gpu:{gpus}"
    elif profile.gpu_request == "gpus_per_task":
        params["gpus_per_task"] = 1
    return params


def make_executor(backend: str, folder: str, profile: Profile, resources: dict, parallel: int, name: str,
                  max_requeues: int):
    import submitit

    if backend == "slurm":
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues)
        executor.update_parameters(**slurm_parameters(profile, resources, parallel, name, max_requeues))
        return executor
    if backend == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=max_requeues)
        executor.update_parameters(timeout_min=resources["time_min"] * max(1, resources.get("tasks", 1)))
        return executor
    raise ValueError(f"no executor for backend {backend!r}")


def default_parallel(backend: str) -> int | None:
    """Local runs use every CPU with one thread each; Slurm arrays are not throttled."""
    if backend in ("local", "debug"):
        from orchestrator.workers import available_cpus

        return available_cpus()
    return None


def sbatch_script(profile: Profile, resources: dict, parallel: int, name: str, n_tasks: int, max_requeues: int,
                  folder: str = "<log folder>") -> str:
    """The sbatch script submitit writes for this array (what --dry-run shows, what golden files pin)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = slurm_parameters(profile, resources, parallel, name, max_requeues)
    return _make_sbatch_string(command="<python> -u -m submitit.core._submit <folder>", folder=folder,
                               map_count=n_tasks, **params)


@contextlib.contextmanager
def detached_children(log_path: Path):
    """Processes started inside outlive this one like batch jobs: they ignore the terminal's
    Ctrl-C and hangup (an ignored signal stays ignored across exec) and write to
    ``log_path`` instead of holding this process's stdout/stderr pipes open.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    saved_handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGHUP)}
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = [os.dup(1), os.dup(2)]
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in (*saved_fds, log):
            os.close(fd)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
