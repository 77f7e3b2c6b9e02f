"""Submit a registry: decide everything first, then act (``--dry-run`` stops in between).

plan():    expand -> state of each experiment -> skip completed / active / failed (unless
           the policy says otherwise) -> at most N -> group by resources -> arrays no
           larger than the cluster's MaxArraySize.
execute(): under the registry's lock, write every spec JSON, record the submission,
           call sbatch once per array, record the job ids.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
from pathlib import Path

from orchestrator import manifest, scheduler
from orchestrator.backends import default_parallel, detached_children, make_executor
from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, atomic_write_json, results_root
from orchestrator.profiles import get_profile
from orchestrator.spec import ExperimentSpec
from orchestrator.status import ACTIVE_STATES, RETRYABLE_STATES, experiment_states

RESOURCE_FIELDS = ("partition", "gpus", "time_min", "mem_gb", "cpus_per_gpu")


INTERRUPTED_STATES = frozenset({"cancelled", "timeout", "missing"})


@dataclasses.dataclass(frozen=True)
class Policy:
    """What to resubmit: Dora-style rules passed down instead of flags threaded through."""
    force: bool = False                # rerun completed experiments from scratch
    retry: frozenset = frozenset()     # states to resubmit (failed ones resume from their checkpoint)

    @classmethod
    def retry_failed(cls) -> Policy:
        return cls(retry=RETRYABLE_STATES)


@dataclasses.dataclass
class Decision:
    spec: ExperimentSpec
    state: str
    action: str  # submit | completed | active | failed | over limit
    fresh_start: bool = False  # archive the old outputs first (forced rerun, diverged)


@dataclasses.dataclass
class PlannedArray:
    resources: dict
    specs: list[ExperimentSpec]
    parallel: int

    @property
    def signature(self) -> str:
        r = self.resources
        return f"{r['partition']}: {r['gpus']} GPU x {r['time_min']} min x {r['mem_gb']} GB x {r['cpus_per_gpu']} CPU/GPU"


@dataclasses.dataclass
class Plan:
    registry: str
    backend: str
    decisions: list[Decision]
    arrays: list[PlannedArray]
    max_requeues: int

    def count(self, action: str) -> int:
        return sum(d.action == action for d in self.decisions)


def resources(spec: ExperimentSpec) -> dict:
    return {field: getattr(spec, field) for field in RESOURCE_FIELDS}


def check_options(limit: int | None, parallel: int | None, max_requeues: int) -> None:
    if limit is not None and limit < 1:
        raise UsageError(f"-n must be at least 1, got {limit}")
    if parallel is not None and parallel < 1:
        raise UsageError(f"--parallel must be at least 1, got {parallel}")
    if max_requeues < 0:
        raise UsageError(f"--max-requeues must be >= 0, got {max_requeues}")


def plan(registry: str, specs: list[ExperimentSpec], backend: str, policy: Policy = Policy(),
         limit: int | None = None, parallel: int | None = None, max_requeues: int = 3) -> Plan:
    check_options(limit, parallel, max_requeues)
    for spec in specs:
        profile = get_profile(spec.partition)
        if backend == "slurm" and profile.backend != "slurm":
            raise UsageError(f"{spec.run_name} is for partition {spec.partition!r}, which is not a Slurm "
                             "partition; use --backend local")
    if backend == "slurm":
        for partition in sorted({s.partition for s in specs}):
            scheduler.check_partition(partition)

    decisions = []
    chosen = 0
    for status in experiment_states(specs, manifest.load_submissions(registry)):
        state = status.state
        if state == "completed" and not policy.force:
            action = "completed"
        elif state in ACTIVE_STATES:
            action = "active"
        elif state in RETRYABLE_STATES and state not in policy.retry:
            action = "failed"
        elif limit is not None and chosen >= limit:
            action = "over limit"
        else:
            action = "submit"
            chosen += 1
        fresh = action == "submit" and state in ("completed", "diverged")
        decisions.append(Decision(status.spec, state, action, fresh))

    groups: dict[tuple, list[ExperimentSpec]] = {}
    for decision in decisions:
        if decision.action == "submit":
            groups.setdefault(tuple(resources(decision.spec).values()), []).append(decision.spec)
    chunk = scheduler.max_array_size() if backend == "slurm" and groups else None
    arrays = []
    for group in groups.values():
        for start in range(0, len(group), chunk or len(group)):
            part = group[start:start + chunk] if chunk else group
            arrays.append(PlannedArray(resources(part[0]), part, parallel or default_parallel(backend) or len(part)))
    return Plan(registry, backend, decisions, arrays, max_requeues)


def archive_outputs(spec: ExperimentSpec) -> Path | None:
    """Move a run's outputs aside (never delete them) so a rerun starts from scratch."""
    paths = RunPaths.of(spec.folder_name, spec.label)
    existing = [p for p in (paths.metrics_csv, paths.config_json, paths.run_dir) if p.exists()]
    if not existing:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = paths.folder / "_archive" / f"{spec.label}-{stamp}"
    target.mkdir(parents=True, exist_ok=True)
    for path in existing:
        shutil.move(str(path), str(target / path.name))
    return target


def execute(plan: Plan) -> manifest.Submission:
    # jobs find their results wherever they run, whatever their working directory
    os.environ["ORCHESTRATOR_RESULTS_DIR"] = str(results_root().resolve())
    fresh = {d.spec.identity for d in plan.decisions if d.fresh_start}
    records = []
    for array in plan.arrays:
        tasks = []
        for index, spec in enumerate(array.specs):
            if spec.identity in fresh:
                archive_outputs(spec)
            paths = RunPaths.of(spec.folder_name, spec.label)
            atomic_write_json(paths.spec_json, spec.to_dict())
            tasks.append(manifest.TaskRecord(index, spec.identity, spec.label, spec.folder_name,
                                             str(paths.spec_json.resolve())))
        records.append(manifest.ArrayRecord(name="", backend=plan.backend, resources=array.resources,
                                            parallel=array.parallel, log_folder="", tasks=tasks))
    submission = manifest.new_submission(plan.registry, records)
    for number, record in enumerate(records):
        record.name = f"orch-{plan.registry}-{submission.id}-{number}"
        log_root = get_profile(record.resources["partition"]).log_dir
        log_root = Path(log_root).expanduser() if log_root else results_root() / "_submitit"
        record.log_folder = str((log_root / plan.registry / submission.id / str(number)).resolve())
    submission.save()  # before sbatch: a crash from here on is repaired by name
    for record in records:
        record.job_id = _submit_array(plan, record)
        submission.save()
    submission.state = "submitted"
    submission.save()
    return submission


def _submit_array(plan: Plan, record: manifest.ArrayRecord) -> str:
    from orchestrator.task import TrainTask, run_local_array

    spec_paths = [task.spec_path for task in record.tasks]
    if plan.backend == "debug":
        for path in spec_paths:
            _run_in_process(path)
        return "debug"
    profile = get_profile(record.resources["partition"])
    if plan.backend == "local":
        resources = {**record.resources, "tasks": -(-len(spec_paths) // record.parallel)}
        executor = make_executor("local", record.log_folder, profile, resources, record.parallel, record.name,
                                 plan.max_requeues)
        with detached_children(Path(record.log_folder) / "controller.log"):
            return executor.submit(run_local_array, spec_paths, record.parallel, plan.max_requeues).job_id
    executor = make_executor("slurm", record.log_folder, profile, record.resources, record.parallel,
                             record.name, plan.max_requeues)
    jobs = executor.map_array(TrainTask(plan.max_requeues), spec_paths)
    for task, job in zip(record.tasks, jobs):  # a one-task "array" is submitted as a plain job
        task.job_id = job.job_id
    return jobs[0].job_id.split("_")[0]


def _run_in_process(spec_path: str) -> None:
    import contextlib
    import sys

    from workloads.run import run

    # the trainer's progress goes to stderr: stdout carries the command's own report
    with contextlib.redirect_stdout(sys.stderr):
        try:
            run(spec_path)
        except Exception as exc:  # the run directory records the failure; go on like a scheduler
            print(f"{spec_path}: {exc}")


def repair_unrecorded(registry: str) -> list[str]:
    """Finish records left in "submitting" by a process that died around sbatch."""
    repaired = []
    for submission in manifest.load_submissions(registry):
        if submission.state != "submitting":
            continue
        for record in submission.arrays:
            if record.job_id is None and record.backend == "slurm":
                found = scheduler.find_jobs_by_name(record.name)
                record.job_id = found[0] if found else None
                for task in record.tasks if record.job_id else []:
                    # submitit sends a one-task "array" as a plain job
                    task.job_id = record.job_id if len(record.tasks) == 1 else f"{record.job_id}_{task.index}"
        submitted = [r for r in submission.arrays if r.job_id]
        submission.arrays = submitted
        submission.state = "submitted" if submitted else "abandoned"
        submission.save()
        repaired.append(f"{submission.id}: {submission.state}")
    return repaired
