"""Submit a registry: decide everything first, then act (``--dry-run`` stops in between).

plan():    check every experiment against its partition (memory planner, the nodes' CPUs,
           GPUs and memory, time for the checkpoint signal) -> state of each experiment
           (from any registry's attempt on its run directory) -> skip completed / active /
           failed (unless the policy says otherwise) -> at most N -> group by resources ->
           arrays no larger than the cluster's MaxArraySize.
execute(): under the submit lock, snapshot the code, write every spec JSON, record the
           submission, call sbatch once per array (held), record the job ids, point each
           run directory at its attempt, release the arrays. On Kubernetes each experiment
           is an array of one, created as a PyTorchJob (``orchestrator.kubernetes``); its
           manifests are written next to the snapshot, as a dry run writes them (``draft``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import os
import shutil
from pathlib import Path

from orchestrator import claim, dependencies, kubernetes, manifest, scheduler
from orchestrator.backends import (SIGNAL_DELAY_S, code_environment, default_parallel, detached_children,
                                   make_executor)
from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, create_or_replace_json, results_root
from orchestrator.planner import plan_batch
from orchestrator.profiles import get_profile
from orchestrator.scheduler import SchedulerError
from orchestrator.spec import ExperimentSpec
from orchestrator.status import ACTIVE_STATES, RETRYABLE_STATES, experiment_states

RESOURCE_FIELDS = ("partition", "gpus", "time_min", "mem_gb", "cpus_per_gpu")
# the USR2 signal comes SIGNAL_DELAY_S before the limit, up to 30 s early (slurmctld checks
# limits every 30 s); a run needs at least a minute more than that to train
MIN_SLURM_TIME_MIN = 3

INTERRUPTED_STATES = frozenset({"cancelled", "timeout", "interrupted", "missing"})


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
    action: str  # submit | completed | active | failed | over limit | blocked
    fresh_start: bool = False  # archive the old outputs first (forced rerun, diverged)
    reason: str = ""  # why it is blocked (orchestrator.dependencies)


@dataclasses.dataclass
class PlannedArray:
    resources: dict
    specs: list[ExperimentSpec]
    parallel: int
    needs: tuple = ()  # run names submitted in earlier arrays of this plan that its specs start from

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
    snapshot: bool = True          # jobs run a copy of the code taken at submit time
    registry_modules: tuple = ()   # the user's registry modules, copied into the snapshot

    def count(self, action: str) -> int:
        return sum(d.action == action for d in self.decisions)


def resources(spec: ExperimentSpec) -> dict:
    """What a job asks of the scheduler. ``tasks_per_node``: one task per GPU (the trainer's
    ranks, started by srun), or one task holding every GPU of the run, which starts the ranks
    itself (a command; torchrun where the partition's profile says ``launcher: torchrun``)."""
    per_gpu = type(spec).process_per_gpu and get_profile(spec.partition).launcher == "srun"
    return {**{field: getattr(spec, field) for field in RESOURCE_FIELDS},
            "tasks_per_node": spec.gpus if per_gpu else 1}


def check_options(limit: int | None, parallel: int | None, max_requeues: int) -> None:
    if limit is not None and limit < 1:
        raise UsageError(f"-n must be at least 1, got {limit}")
    if parallel is not None and parallel < 1:
        raise UsageError(f"--parallel must be at least 1, got {parallel}")
    if max_requeues < 0:
        raise UsageError(f"--max-requeues must be >= 0, got {max_requeues}")


def plan(registry: str, specs: list[ExperimentSpec], backend: str, policy: Policy = Policy(),
         limit: int | None = None, parallel: int | None = None, max_requeues: int = 3,
         snapshot: bool = True, registry_modules=(), check: bool = True,
         max_array_size: int | None = None) -> Plan:
    """``check=False``: the caller has run ``check_experiments`` already; ``max_array_size``:
    split arrays at this size instead of asking the cluster (a dry run without one)."""
    check_options(limit, parallel, max_requeues)
    if check:
        check_experiments(specs, backend)

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
        if action == "submit" and status.occupied_by:
            raise UsageError(f"{spec_dir(status.spec)} holds {status.occupied_by}, not {status.spec.identity} "
                             f"({status.spec.run_name}); give this experiment another label or folder")
        decisions.append(Decision(status.spec, state, action, fresh))

    _block_dependents(decisions)
    submitted = [d.spec for d in decisions if d.action == "submit"]
    wave = dependencies.waves(submitted)
    names = {spec.run_name for spec in submitted}
    groups: dict[tuple, list[ExperimentSpec]] = {}
    for spec in sorted(submitted, key=lambda spec: wave[spec.identity]):  # stable: registry order in a wave
        groups.setdefault((wave[spec.identity], *resources(spec).values()), []).append(spec)
    chunk = (max_array_size or scheduler.max_array_size()) if backend == "slurm" and groups else None
    if backend == "kubernetes":
        chunk = 1  # a PyTorchJob per experiment: a job has no array index
    arrays = []
    for group in groups.values():
        for start in range(0, len(group), chunk or len(group)):
            part = group[start:start + chunk] if chunk else group
            needs = tuple(sorted({name for spec in part for name in spec.dependencies() if name in names}))
            arrays.append(PlannedArray(resources(part[0]), part, parallel or default_parallel(backend) or len(part),
                                       needs))
    return Plan(registry, backend, decisions, arrays, max_requeues, snapshot, tuple(registry_modules))


def _block_dependents(decisions: list[Decision]) -> None:
    """An experiment whose base is neither completed nor submitted now is not submitted either
    (until nothing changes: a blocked one blocks its own dependents)."""
    by_run = {d.spec.run_name: d for d in decisions}
    changed = True
    while changed:
        changed = False
        for decision in decisions:
            if decision.action == "submit":
                reason = dependencies.blocked_reason(decision.spec, by_run)
                if reason:
                    decision.action, decision.reason, changed = "blocked", reason, True


def spec_dir(spec: ExperimentSpec) -> Path:
    return RunPaths.of(spec.folder_name, spec.label).run_dir


def check_experiments(specs: list[ExperimentSpec], backend: str, nodes: bool = True) -> None:
    """Refuse here, in one line, what would otherwise be queued and fail on the node.
    ``nodes=False``: no cluster to ask about its nodes (a dry run on a laptop)."""
    profiles = {}
    for spec in specs:
        profile = profiles.get(spec.partition) or profiles.setdefault(spec.partition, get_profile(spec.partition))
        if backend in ("slurm", "kubernetes") and profile.backend != backend:
            which = "a Slurm" if backend == "slurm" else "a Kubernetes"
            raise UsageError(f"{spec.run_name} is for partition {spec.partition!r}, which is not {which} "
                             f"partition; use --backend {profile.backend}")
        if type(spec).trains_in_process:  # a command plans its own batches
            plan_batch(spec, profile)  # does not fit its GPU even at batch 1: UsageError naming the memory
    if backend != "slurm":
        return
    first_of_group: dict[tuple, ExperimentSpec] = {}
    for spec in specs:
        first_of_group.setdefault(tuple(resources(spec).values()), spec)
    for (partition, gpus, time_min, mem_gb, cpus_per_gpu, _), spec in first_of_group.items():
        if time_min < MIN_SLURM_TIME_MIN:
            raise UsageError(f"{spec.run_name}: time_min={time_min} leaves no room for the checkpoint signal "
                             f"(Slurm sends it {SIGNAL_DELAY_S} s before the limit, up to 30 s early); the "
                             f"minimum is {MIN_SLURM_TIME_MIN}")
        if nodes:
            scheduler.check_resources(partition, gpus, gpus * cpus_per_gpu, mem_gb, spec.run_name)


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


def draft(plan: Plan) -> manifest.Submission:
    """The submission ``execute`` records, not saved: its id, job names, log folders, spec
    paths and the snapshot's place (taken by ``execute``). A Kubernetes dry run writes its
    manifests from it."""
    root = str(results_root().resolve())
    records = []
    for array in plan.arrays:
        tasks = [manifest.TaskRecord(index, spec.identity, spec.label, spec.folder_name,
                                     os.path.join(root, spec.folder_name, spec.label, "spec.json"))
                 for index, spec in enumerate(array.specs)]
        records.append(manifest.ArrayRecord(name="", backend=plan.backend, resources=array.resources,
                                            parallel=array.parallel, log_folder="", tasks=tasks,
                                            max_requeues=plan.max_requeues))
    submission = manifest.new_submission(plan.registry, records)
    for number, record in enumerate(records):
        profile = get_profile(record.resources["partition"])
        record.name = f"orch-{plan.registry}-{submission.id}-{number}"
        if plan.backend == "kubernetes":  # the PyTorchJob's name: a DNS label, so no registry name in it
            record.name, record.namespace = kubernetes.job_name(submission.id, number), profile.kubernetes.namespace
        log_root = Path(profile.log_dir).expanduser() if profile.log_dir else results_root() / "_submitit"
        record.log_folder = str((log_root / plan.registry / submission.id / str(number)).resolve())
    if plan.snapshot and plan.backend in ("slurm", "local", "kubernetes") and records:
        for record in records:
            record.code_dir = str(submission.folder / "code")
    return submission


def execute(plan: Plan) -> manifest.Submission:
    # jobs find their results wherever they run, whatever their working directory
    os.environ["ORCHESTRATOR_RESULTS_DIR"] = str(results_root().resolve())
    submission = draft(plan)
    records = submission.arrays
    # built and validated before anything is written: a bad manifest is one line, nothing left behind
    jobs = kubernetes.manifests(plan, submission) if plan.backend == "kubernetes" else []
    if records and records[0].code_dir:
        from orchestrator import snapshot

        snapshot.take(Path(records[0].code_dir), plan.registry_modules)
    fresh = {d.spec.identity for d in plan.decisions if d.fresh_start}
    for number, (array, record) in enumerate(zip(plan.arrays, records)):
        for spec, task in zip(array.specs, record.tasks):
            if spec.identity in fresh:
                holder = claim.read(RunPaths.of(spec.folder_name, spec.label))
                if claim.holder_alive(holder):
                    raise UsageError(f"{spec.run_name} is being trained by {claim.describe(holder)}; it cannot "
                                     "be rerun from scratch now")
                archive_outputs(spec)
            # the spec the job runs, and which submission runs it (what other registries see)
            create_or_replace_json(task.spec_path, {"spec": spec.to_dict(),
                                                    "submission": manifest.Attempt.pointer(submission, number, task)})
    kubernetes.write(submission, jobs)
    submission.save()  # before sbatch: a crash from here on is repaired by name
    try:
        for number, record in enumerate(records):  # a crash in here is repaired by name: no save per array
            after = _afterok(plan.arrays[number], records[:number])
            record.job_id = kubernetes.create(jobs[number]) if jobs else _submit_array(plan, record, after)
    except SchedulerError:
        if not any(r.job_id for r in records):  # nothing reached the scheduler: no record claims a submission
            submission.path.unlink(missing_ok=True)
            raise
        _finish(submission)  # the arrays before the failure run; the rest keep no job id
        raise
    _finish(submission)
    return submission


def _finish(submission: manifest.Submission, finished_ok: bool = False) -> None:
    """Record the submission as submitted, then let its jobs start."""
    submission.state = "submitted"
    submission.save()
    scheduler.release((r.job_id for r in submission.arrays if r.backend == "slurm" and r.job_id), finished_ok)


def _afterok(array: PlannedArray, earlier: list[manifest.ArrayRecord]) -> str | None:
    """Slurm's ``--dependency`` for an array whose specs start from runs of earlier arrays: the
    job ids of exactly those tasks."""
    if not array.needs:
        return None
    ids = {f"{t.folder_name}/{t.label}": t.job_id or f"{r.job_id}_{t.index}" for r in earlier for t in r.tasks}
    return "afterok:" + ":".join(ids[name] for name in array.needs)


def _submit_array(plan: Plan, record: manifest.ArrayRecord, after: str | None = None) -> str:
    from orchestrator.task import TrainTask, run_local_array

    spec_paths = [task.spec_path for task in record.tasks]
    if plan.backend == "debug":
        for path in spec_paths:
            _run_in_process(path)
        return "debug"
    profile = get_profile(record.resources["partition"])
    code_dir = Path(record.code_dir) if record.code_dir else None
    if plan.backend == "local":
        resources = {**record.resources, "tasks": -(-len(spec_paths) // record.parallel)}
        executor = make_executor("local", record.log_folder, profile, resources, record.parallel, record.name,
                                 plan.max_requeues)
        with detached_children(Path(record.log_folder) / "controller.log"), code_environment(code_dir):
            return executor.submit(run_local_array, spec_paths, record.parallel, plan.max_requeues).job_id
    from submitit.core.utils import FailedJobError

    executor = make_executor("slurm", record.log_folder, profile, record.resources, record.parallel,
                             record.name, plan.max_requeues, code_dir)
    if after:  # starts once its base runs completed; cancelled by Slurm if one of them fails
        extra = executor.parameters.get("additional_parameters") or {}
        executor.update_parameters(dependency=after, additional_parameters={**extra, "kill-on-invalid-dep": "yes"})
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; we say it once
            jobs = executor.map_array(TrainTask(plan.max_requeues), spec_paths)
    except FailedJobError as exc:
        raise SchedulerError(f"sbatch failed: {scheduler.first_line(str(exc))}") from None
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
    """Finish records left in "submitting" by a process that died around sbatch: find the
    jobs by name, put the job pickles submitit had not renamed yet in place, record the
    jobs, point their run directories at them and release them."""
    repaired = []
    for submission in manifest.load_submissions(registry):
        if submission.state != "submitting":
            continue
        unrecorded = [r for r in submission.arrays if r.job_id is None and r.backend == "kubernetes"]
        # created or not: the job names were decided before the record was saved
        created = {job["metadata"]["name"] for namespace in {r.namespace for r in unrecorded}
                   for job in kubernetes.list_jobs(namespace, [submission.id])}
        for record in unrecorded:
            record.job_id = record.name if record.name in created else None
        for record in submission.arrays:
            if record.job_id is None and record.backend == "slurm":
                found = scheduler.find_jobs_by_name(record.name)
                record.job_id = found[0] if found else None
                for task in record.tasks if record.job_id else []:
                    # submitit sends a one-task "array" as a plain job
                    task.job_id = record.job_id if len(record.tasks) == 1 else f"{record.job_id}_{task.index}"
            if record.job_id and record.backend == "slurm":
                _ensure_job_pickles(record)
        if any(r.job_id for r in submission.arrays):  # arrays keep their numbers: run directories point at them
            _finish(submission, finished_ok=True)
        else:
            submission.state = "abandoned"
            submission.save()
        repaired.append(f"{submission.id}: {submission.state}")
    return repaired


def _ensure_job_pickles(record: manifest.ArrayRecord) -> None:
    """The pickle each task's job loads (``<job id>_submitted.pkl``), as submitit writes it."""
    from submitit.core.utils import DelayedSubmission, JobPaths

    from orchestrator.task import TrainTask

    for task in record.tasks:
        path = JobPaths(record.log_folder, job_id=record.task_job_id(task)).submitted_pickle
        if path.exists():
            continue
        delayed = DelayedSubmission(TrainTask(record.max_requeues), task.spec_path)
        delayed.set_timeout(record.resources["time_min"], record.max_requeues)
        path.parent.mkdir(parents=True, exist_ok=True)
        delayed.dump(path)
