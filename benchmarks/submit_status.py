"""Plan and submit a 1,000-experiment registry as arrays, then get status for all of them.

Needs the local Slurm (``bash slurm_templates/local_cluster.sh start``, as root). Jobs are
submitted held (``--hold``, as always) and not released, so nothing runs; they are cancelled at the end.

Baselines measured in the same run: submitit's own ``map_array`` of 1,000 trivial tasks
(submit time), and one bare ``sacct`` for the array. Reported for ours: wall time, the
number of scheduler calls, the time spent inside them, and our own time (the rest).
Target: status of 1,000 tasks costs one sacct call (plus one squeue) and well under 2 s
of our own time. First, without Slurm, ``show`` and ``list`` of the same registry as CLI
processes (``expand_show.py``, which also runs on its own).

    python benchmarks/submit_status.py [--experiments 1000] [--repeats 3]
"""

import argparse
import os
import statistics
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
    parser.add_argument("--repeats", type=int, default=3, help="submits of each kind (medians are printed)")
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
    n, repeats = args.experiments, args.repeats
    baseline_s, expand_s, plan_s, submit_s, status_s, sacct_s = [], [], [], [], [], []
    try:
        for rep in range(repeats):  # interleaved, so that a busy moment hits both sides
            executor = submitit.SlurmExecutor(folder=str(work / f"baseline{rep}" / "%j"))
            executor.update_parameters(partition="sphinx", time=10, mem="1GB", cpus_per_task=1,
                                       additional_parameters={"hold": True}, array_parallelism=n)
            start = time.perf_counter()
            jobs = executor.map_array(noop, range(n))
            baseline_s.append(time.perf_counter() - start)
            subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=False)

            os.environ["ORCHESTRATOR_RESULTS_DIR"] = str(work / f"results{rep}")
            start = time.perf_counter()
            specs = load_registry("BENCH", [str(work / "bench_registry.py")])
            expand_s.append(time.perf_counter() - start)
            counter.reset()
            start = time.perf_counter()
            plan = submission.plan("BENCH", specs, "slurm")
            plan_s.append(time.perf_counter() - start)
            plan_calls, plan_sched_s = list(counter.calls), counter.seconds
            start = time.perf_counter()
            done = submission.execute(plan)
            submit_s.append(time.perf_counter() - start)
            if rep < repeats - 1:
                subprocess.run(["scancel", *[a.job_id for a in done.arrays]], check=False)

        for _ in range(2 * repeats - 1):
            counter.reset()
            start = time.perf_counter()
            statuses = collect("BENCH", [str(work / "bench_registry.py")])["BENCH"]
            status_s.append(time.perf_counter() - start)
            status_calls, status_sched_s = list(counter.calls), counter.seconds
            start = time.perf_counter()
            subprocess.run(["sacct", "-X", "-P", "-n", "-o", "JobID,State", "-j", done.arrays[0].job_id],
                           check=True, capture_output=True)
            sacct_s.append(time.perf_counter() - start)
    finally:
        scheduler._run = counter.original
        scheduler.release = release
        subprocess.run(["scancel", "--name", ",".join(a.name for a in done.arrays)], check=False)

    median = statistics.median
    ours_submit = median(p + s for p, s in zip(plan_s, submit_s))
    states = {s.state for s in statuses}
    print(f"{n} experiments, {len(done.arrays)} array(s); states seen: {', '.join(sorted(states))}; "
          f"medians of {repeats} submits and {2 * repeats - 1} status calls")
    print(f"{'step':38s} {'wall s':>8s} {'sched calls':>12s} {'in Slurm s':>11s} {'our own s':>10s}")
    print(f"{'expand + validate registry':38s} {median(expand_s):8.3f} {0:12d} {0:11.3f} {median(expand_s):10.3f}")
    print(f"{'plan (states of all, grouping)':38s} {median(plan_s):8.3f} {len(plan_calls):12d} "
          f"{plan_sched_s:11.3f} {median(plan_s) - plan_sched_s:10.3f}")
    print(f"{'submit (snapshot, specs, records, sbatch)':38s} {median(submit_s):8.3f} {'(sbatch)':>12s}")
    print(f"{'status of all (expansion included)':38s} {median(status_s):8.3f} {len(status_calls):12d} "
          f"{status_sched_s:11.3f} {median(status_s) - status_sched_s:10.3f}   ({', '.join(status_calls)})")
    print(f"\nbaseline submitit map_array of {n} trivial tasks: {median(baseline_s):.3f} s "
          f"(runs {', '.join(f'{x:.3f}' for x in baseline_s)}); ours plan + submit {ours_submit:.3f} s "
          f"(runs {', '.join(f'{p + s:.3f}' for p, s in zip(plan_s, submit_s))})")
    print(f"baseline bare sacct for the array: {median(sacct_s):.3f} s; ours status {median(status_s):.3f} s")
    print(f"plan + submit / bare map_array = {ours_submit / median(baseline_s):.1f}x (target <= 2x)")
    print(f"status / bare sacct = {median(status_s) / median(sacct_s):.1f}x (target <= 3x)")
    one_each = sorted(status_calls) == ["sacct", "squeue"]
    print(f"status scheduler calls: {len(status_calls)} ({', '.join(status_calls)}; "
          f"target one sacct + one squeue: {'OK' if one_each else 'NO'})")


if __name__ == "__main__":
    sys.exit(main())
