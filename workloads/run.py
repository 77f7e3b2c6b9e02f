"""Run one experiment from its spec JSON: ``python -m workloads.run SPEC_JSON``, or
``run(spec_path)`` in-process (tests, a submitit job).

The spec's workload names its trainer (``type(spec).trainer``, "module:function"), which is
called with the spec path and the keyword options given here (``root``, ``batch_size``,
``grad_accum``, ``device``, ``data_cache``, ``on_step``).

Exit statuses of the script: 0 completed or diverged (status.json says which), 2 usage
error (bad spec, unknown dataset), 75 interrupted by SIGUSR2/SIGTERM after a checkpoint
(requeue it: the next start resumes), 1 anything else (status.json holds the error).

``run_torchrun(spec_path)`` starts the ranks of a multi-GPU spec with torchrun instead (one Slurm
task holding all the GPUs: a profile's ``launcher: torchrun``) and supervises them like a command
(``workloads.supervise``): stop signals go to every rank, and the run ends when they all have.

Under torchrun (``WORLD_SIZE`` > 1) the process group is initialised here (NCCL on GPUs,
gloo on CPUs) unless the caller already did. On a CPU, torch uses ``cpus_per_gpu`` threads
unless ``OMP_NUM_THREADS`` says otherwise.

In a Kubeflow PyTorchJob pod with ``nprocPerNode`` > 1 (``orchestrator.kubernetes``), the training
operator sets WORLD_SIZE to every rank of the job and RANK to the pod's, for ranks nobody has
started yet: ``main`` sees that (``pytorchjob_ranks``) and starts them with ``run_torchrun``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from pathlib import Path

from orchestrator import claim
from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, read_status
from orchestrator.spec import load_spec
from workloads import interrupt, supervise


def trainer_of(spec):
    module, _, function = type(spec).trainer.partition(":")
    return getattr(importlib.import_module(module), function)


def run(spec_path, *, handle_signals: bool = True, **options) -> dict:
    """Train the spec at ``spec_path``; the final status dict, or ``RunInterrupted`` raised.

    ``handle_signals`` routes SIGUSR2/SIGTERM to a graceful stop for the duration of the
    run (main thread only) and restores the previous handlers afterwards.
    """
    spec = load_spec(spec_path)
    trainer = trainer_of(spec)
    if type(spec).trains_in_process:
        import torch

        if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(spec.cpus_per_gpu)
    if options.get("root") is None:
        options["root"] = run_dir_root(spec, spec_path)
    started_group = type(spec).trains_in_process and _init_distributed()
    signals = interrupt.handling_signals() if handle_signals else contextlib.nullcontext()
    try:
        with signals, _claimed(spec, options["root"], started_group) as held:
            if held is None:
                return {"state": "claimed elsewhere", "run": spec.run_name}
            status = trainer(spec_path, **options)
        if started_group:  # a clean teardown; after a failure the other ranks may never arrive
            import torch.distributed

            torch.distributed.barrier()
        return status
    finally:
        if started_group:
            import torch.distributed

            torch.distributed.destroy_process_group()


def run_torchrun(spec_path, *, root=None) -> dict:
    """Train a multi-GPU spec with torchrun starting one rank per GPU in this task; the final
    status, or ``RunInterrupted`` when a stop signal made the ranks checkpoint and stop."""
    spec = load_spec(spec_path)
    paths = RunPaths.of(spec.folder_name, spec.label, root or run_dir_root(spec, spec_path))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.gpus}",
            "-m", "workloads.run", str(spec_path)]
    if root is not None:
        argv += ["--results-dir", str(root)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(spec.cpus_per_gpu))}
    forwarded: list[int] = []
    with interrupt.handling_signals():
        process = supervise.start(argv, env=env)
        print(f"{spec.run_name}: torchrun started {spec.gpus} ranks (pid {process.pid})", flush=True)
        while process.poll() is None:
            supervise.forward(forwarded)
            time.sleep(0.5)
        supervise.wait_for_descendants(forwarded)  # ranks still writing their checkpoint
    status = read_status(paths) or {}
    if forwarded and status.get("state") == "interrupted":
        raise interrupt.RunInterrupted(int(status.get("optimizer_step") or 0), forwarded[0])
    if process.returncode == 0:
        return status
    how = (f"killed by {interrupt.signal_name(-process.returncode)}" if process.returncode < 0
           else f"exit status {process.returncode}")
    raise RuntimeError(f"{spec.run_name}: torchrun ended with {how}; status.json says "
                       f"{status.get('state', 'nothing')}{': ' + status['error'] if status.get('error') else ''}")


@contextlib.contextmanager
def _claimed(spec, root, distributed: bool):
    """Rank 0 claims the run directory before anything is written, and every rank learns
    whether it did. Yields None when another live attempt holds it: then nothing is
    touched and the reason goes to the log."""
    if distributed:
        import torch.distributed as dist
    rank = dist.get_rank() if distributed else 0
    with contextlib.ExitStack() as stack:
        held = True
        if rank == 0:
            try:
                held = stack.enter_context(claim.holding(RunPaths.of(spec.folder_name, spec.label, root),
                                                         spec.identity))
            except claim.ClaimHeld as exc:
                print(f"not training: {exc}", file=sys.stderr, flush=True)
                held = None
        if distributed:
            decision = [held is not None]
            dist.broadcast_object_list(decision, src=0)
            held = held if decision[0] else None
        yield held


def run_dir_root(spec, spec_path) -> Path | None:
    """The results root when ``spec_path`` is a run directory's spec.json, else None (the default).

    So ``python -m workloads.run results/<folder>/<label>/spec.json`` writes next to it,
    whatever the working directory and environment.
    """
    path = Path(spec_path).resolve()
    if path.parent.name == spec.label and path.parent.parent.name == spec.folder_name:
        return path.parent.parent.parent
    return None


def _init_distributed() -> bool:
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def pytorchjob_ranks(spec, environ=None) -> int:
    """The ranks this process must start itself: a PyTorchJob's PET_NPROC_PER_NODE when the
    training operator started this pod's process and torchrun has not yet (torchrun gives each
    rank a LOCAL_RANK; the operator never does); 0 otherwise."""
    environ = os.environ if environ is None else environ
    wanted = environ.get("PET_NPROC_PER_NODE", "")
    if not wanted.isdigit() or int(wanted) < 2 or "LOCAL_RANK" in environ or not type(spec).process_per_gpu:
        return 0
    return int(wanted)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workloads.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec_json", type=Path, help="the spec, as written by spec.to_dict() (or under a 'spec' key)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="results root (default: $ORCHESTRATOR_RESULTS_DIR or ./results)")
    args = parser.parse_args(argv)
    try:
        if pytorchjob_ranks(load_spec(args.spec_json)):
            status = run_torchrun(args.spec_json, root=args.results_dir)
        else:
            status = run(args.spec_json, root=args.results_dir)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except interrupt.RunInterrupted as exc:
        print(exc, file=sys.stderr)
        return interrupt.EXIT_REQUEUE
    print(f"{status['run'] if 'run' in status else args.spec_json}: {status.get('state', 'ended')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
