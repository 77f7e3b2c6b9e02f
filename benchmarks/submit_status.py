"""Plan and submit a 1,000-experiment registry as arrays, then get status for all of them.

Needs the local Slurm (``bash slurm_templates/local_cluster.sh start``, as root). Jobs are
submitted held (``--hold``, as always) and not released, so nothing runs; they are cancelled at the end.

Baselines measured in the same run: submitit's own ``map_array`` of 1,000 trivial tasks
(submit time), and one bare ``sacct`` for the array. Reported for ours: wall time, the
number of scheduler calls, the time spent inside them, and our own time (the rest).
Target: status of 1,000 tasks costs one sacct call (plus one squeue) and well under 2 s
of our own time. First, without Slurm, ``show`` and ``list`` of the same registry as CLI
processes (``expand_show.py``, which also runs on its own).

    python benchmarks/submit_status.py [--experiments 1000]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import expand_show
from expand_show import REGISTRY


class CallCounter:
    """Wraps orchestrator.scheduler._run: counts calls and the time spent waiting on Slurm."""

    def __init__(self, scheduler):
        self.scheduler, self.original = scheduler, scheduler._run
        self.calls, self.seconds = [], 0.0
        scheduler._run = self

    def __call__(self, cmd, timeout_s=60):
        start = time.perf_counter()
        try:
            return self.original(cmd, timeout_s)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls.append(cmd[0])

    def reset(self):
        self.calls, self.seconds = [], 0.0


def noop(i):
    return i


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="submit-bench-"))
    os.environ["ORCHESTRATOR_RESULTS_DIR"] = str(work / "results")
    os.environ["ORCHESTRATOR_CONFIG_DIR"] = str(work / "config")
    (work / "bench_registry.py").write_text(REGISTRY.format(n=args.experiments))
    print("\n".join(expand_show.measure(work / "bench_registry.py", args.experiments)), flush=True)

    import submitit

    from orchestrator import scheduler, submission
    from orchestrator.commands.status import collect
    from orchestrator.registry import load_registry

    # arrays are submitted held; keep them held (no release) so that nothing runs while we measure
    release = scheduler.release
    scheduler.release = lambda *a, **k: None
    counter = CallCounter(scheduler)
    job_ids = []
    try:
        # baseline: submitit's own array submission of trivial tasks
        executor = submitit.SlurmExecutor(folder=str(work / "baseline" / "%j"))
        executor.update_parameters(partition="sphinx", time=10, mem="1GB", cpus_per_task=1,
                                   additional_parameters={"hold": True}, array_parallelism=args.experiments)
        start = time.perf_counter()
        jobs = executor.map_array(noop, range(args.experiments))
        submitit_s = time.perf_counter() - start
        job_ids.append(jobs[0].job_id.split("_")[0])

        start = time.perf_counter()
        specs = load_registry("BENCH", [str(work / "bench_registry.py")])
        expand_s = time.perf_counter() - start
        counter.reset()
        start = time.perf_counter()
        plan = submission.plan("BENCH", specs, "slurm")
        plan_s = time.perf_counter() - start
        plan_calls, plan_sched_s = list(counter.calls), counter.seconds
        counter.reset()
        start = time.perf_counter()
        done = submission.execute(plan)
        submit_s = time.perf_counter() - start
        job_ids += [a.job_id for a in done.arrays]

        counter.reset()
        start = time.perf_counter()
        statuses = collect("BENCH", [str(work / "bench_registry.py")])["BENCH"]
        status_s = time.perf_counter() - start
        status_calls, status_sched_s = list(counter.calls), counter.seconds

        start = time.perf_counter()
        subprocess.run(["sacct", "-X", "-P", "-n", "-o", "JobID,State", "-j", job_ids[-1]], check=True,
                       capture_output=True)
        sacct_s = time.perf_counter() - start
    finally:
        scheduler._run = counter.original
        scheduler.release = release
        if job_ids:
            subprocess.run(["scancel", *job_ids], check=False)

    n = args.experiments
    states = {s.state for s in statuses}
    print(f"{n} experiments, {len(done.arrays)} array(s); states seen: {', '.join(sorted(states))}")
    print(f"{'step':38s} {'wall s':>8s} {'sched calls':>12s} {'in Slurm s':>11s} {'our own s':>10s}")
    print(f"{'expand + validate registry':38s} {expand_s:8.3f} {0:12d} {0:11.3f} {expand_s:10.3f}")
    print(f"{'plan (states of all, grouping)':38s} {plan_s:8.3f} {len(plan_calls):12d} {plan_sched_s:11.3f} "
          f"{plan_s - plan_sched_s:10.3f}")
    print(f"{'submit (spec JSONs, records, sbatch)':38s} {submit_s:8.3f} {'(sbatch)':>12s}")
    print(f"{'status of all':38s} {status_s:8.3f} {len(status_calls):12d} {status_sched_s:11.3f} "
          f"{status_s - status_sched_s:10.3f}   ({', '.join(status_calls)})")
    print(f"\nbaseline submitit map_array of {n} trivial tasks: {submitit_s:.3f} s; "
          f"ours plan+submit {plan_s + submit_s:.3f} s = {(plan_s + submit_s) / submitit_s:.1f}x")
    print(f"baseline bare sacct for the array: {sacct_s:.3f} s; ours status {status_s:.3f} s = "
          f"{status_s / sacct_s:.1f}x, of which our own time {status_s - status_sched_s:.3f} s "
          f"(target < 2 s, one sacct call: {'OK' if status_calls.count('sacct') == 1 else 'NO'})")
    print(f"plan + submit / bare map_array = {(plan_s + submit_s) / submitit_s:.1f}x (target <= 2x)")
    print(f"status / bare sacct = {status_s / sacct_s:.1f}x (target <= 3x)")
    one_each = sorted(status_calls) == ["sacct", "squeue"]
    print(f"status scheduler calls: {len(status_calls)} ({', '.join(status_calls)}; "
          f"target one sacct + one squeue: {'OK' if one_each else 'NO'})")


if __name__ == "__main__":
    sys.exit(main())
