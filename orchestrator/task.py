"""What a submitted job runs: a spec JSON path in, a trained run directory out.

``TrainTask`` is the callable submitit pickles. It takes only the path of the spec JSON,
so a job never depends on a pickled copy of the code's objects, and a run directory can
be re-run by hand with ``python -m workloads.run <run dir>/spec.json``.

Preemption and time limits (SIGUSR2 from Slurm): the trainer finishes its optimizer
step, saves a checkpoint and raises ``RunInterrupted``; only then is submitit's own
handler called, which calls ``checkpoint()`` below and requeues the job. The requeued
job starts the same task, and the trainer resumes from its checkpoint.

``run_local_array`` is the local backend's job: it runs an array's tasks on this
machine, a few at a time, each in its own process (DDP ranks for multi-GPU specs).
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import submitit

from orchestrator import claim
from orchestrator.paths import RunPaths, atomic_write_json, read_status
from orchestrator.profiles import DEFAULT_MAX_REQUEUES
from orchestrator.spec import load_spec
from orchestrator.workers import available_cpus

EXIT_REQUEUE = 75  # the trainer's "stopped with a checkpoint, run me again"
# USR2 comes 90 s before the limit (up to 30 s early); a stop with less time left than
# this is the time limit, one with more is a preemption or a manual signal
TIME_LIMIT_MARGIN_S = 180


class TrainTask(submitit.helpers.Checkpointable):
    def __init__(self, max_requeues: int = DEFAULT_MAX_REQUEUES):
        self.max_requeues = max_requeues

    def __call__(self, spec_path: str) -> str:
        from workloads.interrupt import RunInterrupted
        from workloads.run import run, run_torchrun

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one task per GPU: torch.distributed from SLURM's variables
            submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
        spec = load_spec(spec_path)
        # one task for a run of many GPUs whose workload wants a process per GPU: the profile's torchrun
        torchrun = env.num_tasks == 1 and spec.gpus > 1 and type(spec).process_per_gpu
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        try:
            (run_torchrun if torchrun else run)(spec_path)
        except RunInterrupted as stop:
            if stop.signum == signal.SIGUSR2 and callable(submitit_handler):
                self._requeue(submitit_handler, spec_path, stop.optimizer_step)
            raise
        return spec_path

    def _requeue(self, submitit_handler, spec_path: str, step: int) -> None:
        """Hand the stop to submitit (checkpoint() then ``scontrol requeue``), having decided
        ourselves whether it is a time limit: submitit guesses from 80 % of the wall time, so
        under 50 min every preemption or manual USR2 would spend a timeout credit."""
        handler = getattr(submitit_handler, "__self__", None)
        delayed = getattr(handler, "_delayed", None)
        timed_out, limit = near_time_limit()
        if handler is not None and delayed is not None and timed_out is not None:
            handler.has_timed_out = lambda: timed_out
            if timed_out and delayed._timeout_countdown <= 0 and submitit.JobEnvironment().global_rank == 0:
                mark(spec_path, "timeout", f"reached its time limit ({limit}) with no requeue left "
                                           f"(--max-requeues {self.max_requeues}); `retry` resumes from its "
                                           f"checkpoint at step {step}")
        submitit_handler(signal.SIGUSR2, None)  # requeues and exits, or raises UncompletedJobError

    def checkpoint(self, spec_path: str):
        return submitit.helpers.DelayedSubmission(self, spec_path)


def near_time_limit(environ=None, now: datetime.datetime | None = None) -> tuple[bool | None, str]:
    """(whether this Slurm job is within the signal's reach of its end time, i.e. at its time
    limit rather than preempted; its time limit as Slurm prints it). None when Slurm cannot
    tell: then submitit's own guess stands."""
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        return None, ""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e|%l"], capture_output=True, text=True,
                             timeout=30)
        end, _, limit = out.stdout.strip().partition("|")
        end = datetime.datetime.fromisoformat(end)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        print(f"could not read the end time of job {job_id}; submitit decides timeout vs preemption",
              file=sys.stderr)
        return None, ""
    return (end - (now or datetime.datetime.now())).total_seconds() <= TIME_LIMIT_MARGIN_S, limit


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(spec_path: str, threads: int) -> tuple[list[subprocess.Popen], int]:
    """The rank processes of one task, with torch.distributed's env:// variables when > 1 (one
    process for a workload that starts its own ranks); and the CPU slots ("GPUs") it takes."""
    spec = load_spec(spec_path)
    paths = RunPaths(Path(spec_path).parent.parent, spec.label)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    world = spec.gpus if spec.gpus > 1 and type(spec).process_per_gpu else 1
    port = str(_free_port())
    processes = []
    for rank in range(world):
        rank_env = dict(env)
        if world > 1:
            rank_env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                            LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        log = open(paths.log_dir / (f"rank{rank}.log" if world > 1 else "train.log"), "ab")
        processes.append(subprocess.Popen([sys.executable, "-m", "workloads.run", spec_path], env=rank_env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    return processes, spec.gpus


def mark(spec_path: str, state: str, error: str) -> None:
    """Record how a task ended when its trainer could not (killed, cancelled before it started,
    out of requeues). Never over a final state, nor while another live attempt holds the run."""
    spec = load_spec(spec_path)
    paths = RunPaths(Path(spec_path).parent.parent, spec.label)
    holder = claim.read(paths)
    if holder and holder.get("job_id") != claim.attempt_id() and claim.holder_alive(holder):
        return
    status = read_status(paths) or {}
    if status.get("state") in ("completed", "diverged", "failed", "timeout"):
        return
    status.pop("reason", None)  # how an interruption went; the error now says how the run ended
    atomic_write_json(paths.status_json, {**status, "state": state, "identity": spec.identity, "error": error})


def _dependencies_ready(spec_path: str) -> bool | str:
    """True when every run the spec starts from has completed, False while one is still going,
    or why it will never start (a base run that failed)."""
    from orchestrator.dependencies import DependencyFailed, wait_for
    from orchestrator.spec import load_spec

    needs = load_spec(spec_path).dependencies()
    try:
        wait_for(needs, poll_s=0, once=True)
    except DependencyFailed as exc:
        return f"not run: {exc}"
    except TimeoutError:
        return False
    return True


def run_local_array(spec_paths: list[str], parallel: int, max_requeues: int = DEFAULT_MAX_REQUEUES) -> dict:
    """Run every task, at most ``parallel`` CPU-processes at once; returns exit codes by spec path."""
    waiting = list(spec_paths)
    running: dict[str, list[subprocess.Popen]] = {}
    slots: dict[str, int] = {}
    requeues = {path: 0 for path in spec_paths}
    codes: dict[str, int] = {}
    stopping = []
    os.environ["ORCHESTRATOR_JOB_ID"] = str(os.getpid())  # the job id its trainers claim run directories as
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    threads = max(1, available_cpus() // max(1, parallel))
    try:
        while (waiting or running) and not stopping:
            busy = sum(slots[path] for path in running)
            for path in list(waiting):
                if busy >= parallel:
                    break
                ready = _dependencies_ready(path)  # a fine-tune waits for its base run, taking no slot
                if ready is False:
                    continue
                waiting.remove(path)
                if isinstance(ready, str):
                    codes[path] = 1
                    mark(path, "failed", ready)
                    continue
                running[path], slots[path] = _start(path, threads)
                busy += slots[path]
            time.sleep(0.2)
            for path, processes in list(running.items()):
                if any(p.poll() is None for p in processes):
                    continue
                del running[path]
                code = max((p.returncode for p in processes), key=abs)
                if code == EXIT_REQUEUE and requeues[path] < max_requeues:
                    requeues[path] += 1
                    waiting.insert(0, path)
                    continue
                codes[path] = code
                if code:
                    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
                    mark(path, "failed", f"trainer ended with {how}")
    finally:
        for processes in running.values():  # cancelled: let trainers checkpoint, then stop
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
        for path, processes in running.items():
            for process in processes:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
            mark(path, "cancelled", "cancelled while running")
        for path in waiting:
            mark(path, "cancelled", "cancelled before it started")
    return codes
