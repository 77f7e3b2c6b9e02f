"""How an array of tasks is handed to something that runs it.

- ``slurm``: submitit's SlurmExecutor, one job array per resource group (``map_array``).
  Arrays are submitted held (``--hold``): the submitter records their ids first, then
  releases them, so no task starts before its submission is on disk.
- ``local``: submitit's LocalExecutor runs one job per array on this machine, which runs
  the tasks a few at a time (``orchestrator.task.run_local_array``). The embedded default
  when no Slurm controller answers.
- ``debug``: in this process, one task after the other, so breakpoints work.
- ``kubernetes``: one Kubeflow PyTorchJob per experiment through the Kubernetes API
  (``orchestrator.kubernetes``); ``auto`` picks it when every partition is a Kubernetes one.

Both real backends run a code snapshot when given one (``code_dir``, see
``orchestrator.snapshot``): Slurm jobs through lines in the sbatch script, local jobs
through the environment they inherit at submit time (``code_environment``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from orchestrator.errors import UsageError, unknown
from orchestrator.profiles import Profile
from orchestrator.scheduler import SchedulerError
from orchestrator.snapshot import pythonpath

BACKENDS = ("auto", "slurm", "local", "kubernetes", "debug")
SIGNAL_DELAY_S = 90  # --signal=USR2@90: the trainer's time to checkpoint before a time limit


def resolve_backend(name: str, partitions=()) -> tuple[str, str]:
    """(backend, why). auto: slurm when sbatch is on PATH and its controller answers, else local.

    ``sbatch`` alone is not enough: a stopped local Slurm leaves it on PATH with nobody
    behind it. An explicit ``slurm`` with no controller is an error, not a quiet fallback.
    """
    from orchestrator.profiles import get_profile

    if name not in BACKENDS:
        raise unknown("backend", name, BACKENDS)
    if name == "auto":
        if partitions and all(get_profile(p).backend == "local" for p in partitions):
            return "local", "auto: only local partitions"
        if partitions and all(get_profile(p).backend == "kubernetes" for p in partitions):
            return "kubernetes", "auto: only Kubernetes partitions"
        if not shutil.which("sbatch"):
            return "local", "auto: no sbatch on PATH"
        try:
            ping_controller()
        except SchedulerError:
            return "local", ("auto: sbatch found but no Slurm controller answers (scontrol ping); "
                             "running on this machine")
        return "slurm", "auto: sbatch found and the Slurm controller answers"
    if name == "slurm":
        if not shutil.which("sbatch"):
            raise UsageError("backend 'slurm' needs sbatch on PATH; use --backend local to run on this machine")
        ping_controller()
    return name, "requested"


def ping_controller(timeout_s: float = 10) -> None:
    """Raise SchedulerError unless ``scontrol ping`` says a slurmctld is UP."""
    try:
        result = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise SchedulerError("scontrol not found: is Slurm installed on this machine?") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"no Slurm controller answers: scontrol ping took over {timeout_s:.0f} s") from None
    if "is UP" not in result.stdout:  # older Slurm says DOWN with exit status 0
        said = result.stdout.strip() or result.stderr.strip() or f"exit status {result.returncode}"
        said = said.split("*")[0]  # 22.05 follows "... is DOWN" with a banner of asterisks
        raise SchedulerError(f"no Slurm controller answers: scontrol ping: {' '.join(said.split())}")


def slurm_parameters(profile: Profile, resources: dict, parallel: int, name: str, max_requeues: int,
                     code_dir: Path | None = None) -> dict:
    """submitit SlurmExecutor parameters for one array on one node, held: one task per GPU, or
    one task with all of them (``tasks_per_node`` 1, for a command that starts its own ranks)."""
    gpus = resources["gpus"]
    tasks = resources.get("tasks_per_node", gpus)  # records written before the key existed: per GPU
    params = {
        "partition": profile.name,
        "job_name": name,
        "time": resources["time_min"],
        "mem": f"{resources['mem_gb']}GB",
        "cpus_per_task": resources["cpus_per_gpu"] * gpus // tasks,
        "nodes": 1,
        "ntasks_per_node": tasks,
        "array_parallelism": parallel,
        "signal_delay_s": SIGNAL_DELAY_S,
        "additional_parameters": {"hold": True},  # released once the submission records the job ids
    }
    if code_dir is not None:
        params["setup"] = code_setup(code_dir)
    if profile.account:
        params["account"] = profile.account
    if profile.gpu_request == "gres":
        params["gres"] = f"gpu:{gpus}"
    elif profile.gpu_request == "gpus_per_task":
        params["gpus_per_task"] = gpus // tasks
    return params


def code_setup(code_dir: Path) -> list[str]:
    """sbatch lines that make the job import from ``code_dir`` (what ``code_environment`` does locally).

    PYTHONSAFEPATH keeps the job's working directory (the submitter's, often the checkout)
    off sys.path, where it would come before PYTHONPATH.
    """
    return [f"export PYTHONPATH={shlex.quote(str(code_dir))}${{PYTHONPATH:+:$PYTHONPATH}}",
            "export PYTHONSAFEPATH=1"]


@contextlib.contextmanager
def code_environment(code_dir: Path | None):
    """Processes started inside import from ``code_dir``: a local job copies ``os.environ``
    when it starts, and its trainers copy the job's. Restored on exit; ``None`` changes nothing.
    """
    if code_dir is None:
        yield
        return
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"] = pythonpath(code_dir, saved["PYTHONPATH"])
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_executor(backend: str, folder: str, profile: Profile, resources: dict, parallel: int, name: str,
                  max_requeues: int, code_dir: Path | None = None):
    """``code_dir`` is for slurm; a local job takes it from the environment: submit it inside
    ``code_environment`` (a local executor has no script to put it in)."""
    import submitit

    if backend == "slurm":
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues)
        executor.update_parameters(**slurm_parameters(profile, resources, parallel, name, max_requeues, code_dir))
        return executor
    if code_dir is not None:
        raise ValueError("a local job runs a snapshot by being submitted inside code_environment(code_dir)")
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
                  folder: str = "<log folder>", code_dir: Path | None = None) -> str:
    """The sbatch script submitit writes for this array (what --dry-run shows, what golden files pin)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = slurm_parameters(profile, resources, parallel, name, max_requeues, code_dir)
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
