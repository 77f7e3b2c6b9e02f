"""The command workload's trainer: a supervisor that runs the command and keeps the run directory true.

It writes the config file, starts the command (``bash -c``, in ``workdir``, or without one in the
directory the job started in: where ``submit`` ran), tails its metrics into the standard CSV while
it runs, and reports how it ended in status.json:

- SIGUSR2 / SIGTERM (Slurm's time-limit warning, a preemption, ``cancel``) are forwarded to every
  process of the command; when all have exited, the run is ``interrupted`` at its last logged step
  and ``RunInterrupted`` is raised, so the task is requeued like a built-in trainer's (SIGUSR2) and
  the next start runs the command again, which resumes from its own checkpoint. Exit status 75
  (``EX_TEMPFAIL``) without a signal also means "run me again".
- Exit 0 at the planned step: ``completed``. Exit 0 before it, or with no metrics at all: ``failed``,
  saying so. Any other exit: ``failed`` with the last lines of the command's output.
- A command that has written no metrics after ``NO_METRICS_WARN_S`` (600 s, or
  ``$ORCHESTRATOR_NO_METRICS_WARN_S``) is flagged in status.json (``reason``) while it runs, so
  ``status`` says so instead of showing an empty progress.

The command's output goes to ``<run dir>/logs/command.log`` (appended, one header line per start).
Signals go to the command's whole process tree and the supervisor waits for all of it
(``workloads.supervise``): torchrun's workers live in sessions of their own, and torchrun dies of
a SIGUSR2 while its workers are still writing their checkpoint.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator import claim
from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, atomic_write_json, atomic_write_text, read_status
from orchestrator.profiles import get_profile
from orchestrator.spec import load_spec, thaw
from workloads import interrupt, supervise
from workloads.command import code_commit, fill
from workloads.command.metrics import MetricsTail
from workloads.runfiles import FINAL_STATES, MetricsCSV, git_commit, spec_identity, write_status

EXIT_REQUEUE = interrupt.EXIT_REQUEUE
POLL_S = 2.0
NO_METRICS_WARN_S = float(os.environ.get("ORCHESTRATOR_NO_METRICS_WARN_S", 600))
OUTPUT_TAIL_LINES = 20
CONFIG_NAMES = {"yaml": "config.yaml", "json": "config.json"}


class CommandFailed(Exception):
    """The command ended without finishing; status.json says how (the job fails too)."""


def placeholder_values(spec, paths: RunPaths, workdir: Path) -> dict:
    run_dir = paths.run_dir.resolve()
    return {"gpus": spec.gpus, "cpus_per_gpu": spec.cpus_per_gpu, "seed": spec.seed, "steps": spec.steps,
            "label": spec.label, "run_dir": run_dir, "config_path": run_dir / CONFIG_NAMES[spec.config_format],
            "checkpoint_dir": run_dir / "checkpoints", "metrics_path": run_dir / "<metrics>",
            "workdir": workdir, "python": sys.executable}


def filled_config(value, values: dict):
    """The config with its placeholders filled in; a string that is one numeric placeholder
    (``"{steps}"``) becomes the number."""
    if isinstance(value, dict):
        return {key: filled_config(item, values) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [filled_config(item, values) for item in value]
    if not isinstance(value, str):
        return value
    whole = value[1:-1] if value.startswith("{") and value.endswith("}") else None
    if whole in values and not isinstance(values[whole], Path):  # "{steps}" alone stays a number
        return values[whole]
    return fill(value, values)


def write_config(spec, path: Path, values: dict) -> None:
    config = filled_config(thaw(spec.config), values)
    if spec.config_format == "json":
        text = json.dumps(config, indent=2) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(config, sort_keys=False)
    atomic_write_text(path, text)


def train(spec_path, *, root=None, poll_s: float = POLL_S, **unused) -> dict:
    """Run the command of the spec at ``spec_path`` to its end; the final status, or
    ``RunInterrupted`` raised after a forwarded stop signal."""
    spec = load_spec(spec_path)
    paths = RunPaths.of(spec.folder_name, spec.label, root)
    status = read_status(paths) or {}
    if status.get("identity", spec.identity) != spec.identity:
        raise UsageError(f"{paths.run_dir} holds experiment {status['identity']}, not {spec.identity} "
                         f"({spec.run_name}); use another label or remove the directory")
    if status.get("state") in FINAL_STATES:
        print(f"{spec.run_name}: already {status['state']} ({paths.status_json})", flush=True)
        return status
    step = {"last": None}
    try:
        return _supervise(spec, paths, status, poll_s, step)
    except (interrupt.RunInterrupted, CommandFailed):
        raise
    except BaseException as exc:
        write_status(paths, spec, "failed", step["last"] or 0, error=f"{type(exc).__name__}: {exc}")
        raise


def _workdir(spec) -> Path:
    workdir = Path(spec.workdir).expanduser() if spec.workdir else Path.cwd()
    if not workdir.is_dir():
        raise UsageError(f"workdir {workdir} is not a directory on {os.uname().nodename}")
    if spec.code_commit is not None:
        code_commit.cache_clear()
        found = code_commit(str(workdir))
        if found != spec.code_commit:
            raise UsageError(f"workdir {workdir} is at commit {found}, but {spec.run_name} was defined at "
                             f"{spec.code_commit}: the code changed after the experiment was made; check out "
                             f"that commit, or expand the registry again (a new identity)")
    return workdir


def _supervise(spec, paths: RunPaths, status: dict, poll_s: float, step: dict) -> dict:
    workdir = _workdir(spec)
    values = placeholder_values(spec, paths, workdir)
    values["metrics_path"] = paths.run_dir.resolve() / fill(spec.metrics_file, values)
    metrics_path = values["metrics_path"]
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    if spec.config is not None:
        write_config(spec, values["config_path"], values)
    command = fill(spec.command, values, quote=shlex.quote)
    env = {**os.environ, **{key: fill(value, values) for key, value in (spec.env or {}).items()}}
    if spec_identity(paths.spec_json) != spec.identity:
        atomic_write_json(paths.spec_json, {"spec": spec.to_dict()})
    atomic_write_json(paths.config_json, {
        "spec": spec.to_dict(), "identity": spec.identity, "derived": spec.derived(), "command": command,
        "workdir": str(workdir), "git_commit": git_commit(workdir), "metrics_path": str(metrics_path),
        "host": os.uname().nodename, "code": str(Path(__file__).resolve().parent.parent.parent)})

    elapsed_before = float(status.get("elapsed_s") or 0.0)
    tail = MetricsTail(metrics_path, spec, get_profile(spec.partition).peak_flops_per_gpu)
    csv_log = MetricsCSV(paths.metrics_csv, 0)  # rebuilt from the command's whole log at every start
    start = time.monotonic()
    first = _take(tail, csv_log, elapsed_before, step)
    resumed = step["last"]
    write_status(paths, spec, "running", resumed or 0, resumed_from=resumed, elapsed_s=elapsed_before)
    log_path = paths.log_dir / "command.log"
    with open(log_path, "ab") as log:
        log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} attempt "
                  f"{claim.attempt_id()} on {os.uname().nodename}: {command}\n".encode())
        log.flush()
        process = supervise.start(["bash", "-c", command], cwd=workdir, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    print(f"{spec.run_name}: started the command (pid {process.pid}) in {workdir}; output in {log_path}", flush=True)
    forwarded: list[int] = []
    warned = first > 0
    try:
        while True:
            code = process.poll()
            for signum in supervise.forward(forwarded):
                print(f"forwarded {signal.Signals(signum).name} to the command's processes", flush=True)
            got = _take(tail, csv_log, elapsed_before + time.monotonic() - start, step)
            if got and not warned:
                warned = True
            elif not warned and time.monotonic() - start > NO_METRICS_WARN_S:
                warned = True
                write_status(paths, spec, "running", 0, reason=f"no metrics in {metrics_path} after "
                             f"{NO_METRICS_WARN_S:g} s (metrics_format {spec.metrics_format}); see {log_path}")
            if code is not None:
                break
            time.sleep(poll_s)
        left = supervise.wait_for_descendants(forwarded)  # ranks still writing a checkpoint
        if left:
            print(f"{spec.run_name}: stopped processes the command left running: {', '.join(left)}", flush=True)
        _take(tail, csv_log, elapsed_before + time.monotonic() - start, step)
    finally:
        if process.poll() is None:  # the supervisor is failing: do not leave the command behind
            supervise.signal_tree(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                supervise.signal_tree(signal.SIGKILL)
        csv_log.close()
    elapsed = round(elapsed_before + time.monotonic() - start, 3)
    return _outcome(spec, paths, code, forwarded, csv_log.rows, metrics_path, log_path, elapsed)


def _take(tail: MetricsTail, csv_log: MetricsCSV, elapsed_s: float, step: dict) -> int:
    rows = tail.read()
    for row in rows:
        if row.replaces:
            csv_log.drop_from(row.values["optimizer_step"])
        csv_log.append({**row.values, "elapsed_s": round(elapsed_s, 3)})
        step["last"] = row.values["optimizer_step"]
    return len(rows)


def _output_tail(log_path: Path, lines: int = OUTPUT_TAIL_LINES) -> str:
    """The last lines of the current attempt's output."""
    with open(log_path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - 64 * 1024))
        text = handle.read().decode("utf-8", errors="replace")
    attempt = text.rsplit("\n=== ", 1)[-1].split("\n", 1)[-1] if "\n=== " in text or text.startswith("=== ") else text
    return "\n".join(collections.deque(attempt.rstrip("\n").splitlines(), maxlen=lines))


def _outcome(spec, paths, code: int, forwarded: list[int], rows: list[dict], metrics_path: Path,
             log_path: Path, elapsed: float) -> dict:
    last = rows[-1] if rows else None
    step = int(last["optimizer_step"]) if last else 0
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    finished = last is not None and step >= spec.steps
    if code == 0 and finished:
        val = [float(r["val_loss"]) for r in rows if r.get("val_loss") not in ("", None)]
        return write_status(paths, spec, "completed", step, loss=float(last["loss"]),
                            tokens_processed=int(float(last["tokens_processed"])) if last["tokens_processed"] != "" else None,
                            elapsed_s=elapsed, **({"val_loss": val[-1]} if val else {}))
    if forwarded or code == EXIT_REQUEUE:
        signum = forwarded[0] if forwarded else None
        why = (f"stopped by {interrupt.signal_name(signum)}" if forwarded else "asked to run again (exit status 75)")
        write_status(paths, spec, "interrupted", step, elapsed_s=elapsed,
                     interrupted_by=interrupt.signal_name(signum),
                     reason=f"{why}; the command ended with {how} at step {step}: the next start runs it again "
                            "and it resumes from its own checkpoint")
        raise interrupt.RunInterrupted(step, signum)
    if last is None:
        problem = f"wrote no metrics to {metrics_path} (metrics_format {spec.metrics_format})"
    elif code == 0:
        problem = f"ended at step {step} of {spec.steps}"
    else:
        problem = f"ended at step {step}"
    error = f"the command {problem} with {how}"
    output = _output_tail(log_path)
    write_status(paths, spec, "failed", step, error=error + (f"; its last lines:\n{output}" if output else ""),
                 elapsed_s=elapsed)
    raise CommandFailed(f"{spec.run_name}: {error}")

