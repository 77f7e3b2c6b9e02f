"""Submit a registry's experiments as job arrays, skipping what is done or already queued.

Everything is decided first (--dry-run prints that plan and stops); then the spec JSON of
every task is written, the submission is recorded, and each array is handed to sbatch.
"""

from __future__ import annotations

import contextlib
import json
import sys

from orchestrator import fmt, manifest, scheduler
from orchestrator.errors import UsageError
from orchestrator.backends import BACKENDS, resolve_backend
from orchestrator.registry import load_registry


def add_arguments(parser) -> None:
    parser.add_argument("registry", help="registry name, e.g. TRANSFORMER_SCALING")
    add_submit_options(parser)
    parser.add_argument("--force", action="store_true", help="rerun completed experiments from scratch "
                        "(their old outputs are moved to <folder>/_archive/)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also resubmit failed, timed-out, cancelled, diverged and missing experiments")


def add_submit_options(parser) -> None:
    parser.add_argument("-n", type=int, default=None, metavar="N", help="submit at most N experiments")
    parser.add_argument("--parallel", type=int, default=None, metavar="K",
                        help="run at most K tasks of an array at once (the array's %%K)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="auto: kubernetes for Kubernetes partitions; slurm when sbatch is on PATH and its "
                             "controller answers; else local")
    parser.add_argument("--max-requeues", type=int, default=3,
                        help="requeues after a time limit before a run counts as timed out (preemptions "
                             "do not count)")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="run the installed code, not a copy taken at submit time (edits then reach "
                             "pending jobs)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing (on Kubernetes: "
                        "write the PyTorchJob manifests, no cluster needed)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from orchestrator.submission import Policy

    specs = load_registry(args.registry, args.registry_module)
    policy = Policy(force=args.force, retry=Policy.retry_failed().retry if args.retry_failed else frozenset())
    submit_specs(args, args.registry, specs, policy)
    return 0


def submit_specs(args, registry: str, specs, policy):
    """Plan and (unless --dry-run) submit; print what was done; return the plan."""
    from orchestrator import submission

    from orchestrator import config
    from orchestrator.profiles import get_profile
    from orchestrator.scheduler import SchedulerError

    submission.check_options(args.n, args.parallel, args.max_requeues)
    partitions = {s.partition for s in specs}
    cluster = True
    try:
        backend, why = resolve_backend(args.backend, partitions)
    except (UsageError, SchedulerError) as exc:
        if not (args.dry_run and args.backend == "slurm"):
            raise
        # a laptop may print the exact #SBATCH lines; what only the cluster knows goes unchecked
        backend, why, cluster = "slurm", f"requested; dry run without a cluster ({exc}): node limits unchecked", False
    gpu_partitions = sorted(p for p in partitions if get_profile(p).backend != "local")
    if backend == "local" and gpu_partitions:
        print(f"warning: {registry} is written for {', '.join(gpu_partitions)}, and runs on this machine's CPU "
              f"with the local backend ({why})", file=sys.stderr)
    submission.check_experiments(specs, backend, nodes=cluster)  # refused before anything is written
    if backend == "kubernetes" and not args.dry_run:
        from orchestrator import kubernetes

        kubernetes.configuration()  # no kube config: one line, before anything is written
    lock = contextlib.nullcontext() if args.dry_run else manifest.submit_lock()  # a dry run writes nothing
    with lock:
        repaired = submission.repair_unrecorded(registry) if not args.dry_run else []
        plan = submission.plan(registry, specs, backend, policy, limit=args.n, parallel=args.parallel,
                               max_requeues=args.max_requeues, snapshot=not getattr(args, "no_snapshot", False),
                               registry_modules=config.registry_modules() + list(args.registry_module),
                               check=False, max_array_size=None if cluster else scheduler.DEFAULT_MAX_ARRAY_SIZE)
        done = None if args.dry_run or not plan.arrays else submission.execute(plan)
    written = []
    if plan.backend == "kubernetes" and plan.arrays:
        from orchestrator import kubernetes

        if args.dry_run:  # what a submit would send, from the same draft: no cluster needed
            draft = submission.draft(plan)
            written = kubernetes.write(draft, kubernetes.manifests(plan, draft))
        else:
            written = [kubernetes.manifest_path(done, record.name) for record in done.arrays]
    report(args, plan, done, repaired, why, written)
    return plan


def _sbatch_flags(plan, array) -> str:
    from orchestrator.backends import sbatch_script
    from orchestrator.profiles import get_profile

    if plan.backend == "kubernetes":
        profile = get_profile(array.resources["partition"])
        nproc = array.resources["gpus"] if type(array.specs[0]).process_per_gpu else 1
        return f"namespace {profile.kubernetes.namespace}, nprocPerNode {nproc}"
    if plan.backend != "slurm":
        return f"{plan.backend} backend, {array.parallel} at a time"
    script = sbatch_script(get_profile(array.resources["partition"]), array.resources, array.parallel, "<name>",
                           len(array.specs), plan.max_requeues)
    skip = ("--output", "--error", "--open-mode", "--wckey", "--job-name", "--hold")
    return " ".join(line.split(maxsplit=1)[1] for line in script.splitlines()
                    if line.startswith("#SBATCH") and not line.split()[1].startswith(skip))


def report(args, plan, submission, repaired, why="", manifests=()) -> None:
    counts = {action: plan.count(action) for action in ("submit", "completed", "active", "failed", "over limit",
                                                       "blocked")}
    arrays = [{"job_id": record.job_id, "tasks": len(record.tasks), "resources": record.resources,
               "parallel": record.parallel} for record in (submission.arrays if submission else [])]
    if args.json:
        print(json.dumps({"registry": plan.registry, "backend": plan.backend, "dry_run": args.dry_run,
                          "counts": counts, "arrays": arrays or [
                              {"tasks": len(a.specs), "resources": a.resources, "parallel": a.parallel,
                               "sbatch": _sbatch_flags(plan, a)} for a in plan.arrays],
                          "submission": submission.id if submission else None, "repaired": repaired,
                          **({"manifests": [str(p) for p in manifests]} if manifests else {})}, indent=2))
        return
    from rich.markup import escape  # a PyTorchJob's name in brackets reads as a style tag

    console = fmt.console()
    for line in repaired:
        console.print(f"[yellow]repaired an interrupted submission[/yellow] {line}")
    if args.dry_run:
        from rich.table import Table

        table = Table(title=f"{plan.registry}: plan ({plan.backend} backend, nothing submitted)")
        how = "PyTorchJob" if plan.backend == "kubernetes" else "sbatch"
        for column in ("array", "tasks", "resources", how, "first labels", "after"):
            table.add_column(column)
        for number, array in enumerate(plan.arrays):
            labels = ", ".join(s.label for s in array.specs[:3]) + (" ..." if len(array.specs) > 3 else "")
            table.add_row(str(number), str(len(array.specs)), array.signature, _sbatch_flags(plan, array), labels,
                          ", ".join(array.needs))
        console.print(table)
    verb = "would submit" if args.dry_run else "submitted"
    kubernetes = plan.backend == "kubernetes"
    jobs = ", ".join(a["job_id"] if kubernetes else f"{a['job_id']} ({_plural(a['tasks'], 'task')})"
                     for a in arrays)
    console.print(f"{plan.registry}: {verb} {_plural(counts['submit'], 'experiment')} "
                  + (f"as {_plural(len(plan.arrays), 'PyTorchJob')}" if kubernetes
                     else f"in {_plural(len(plan.arrays), 'array')}")
                  + (" " + escape(f"[{jobs}]") if jobs else "") + f" on the {plan.backend} backend ({why})")
    if manifests:
        console.print(f"{'wrote' if args.dry_run else 'sent'} {_plural(len(manifests), 'manifest')}:",
                      *(str(p) for p in manifests), sep="\n  ", soft_wrap=True)
    skipped = [f"{counts[k]} {k}" for k in ("completed", "active", "over limit") if counts[k]]
    if skipped:
        console.print("skipped: " + ", ".join(skipped).replace("active", "already queued or running"))
    for decision in plan.decisions if counts["blocked"] else ():
        if decision.action == "blocked":
            console.print(f"[yellow]not submitted: {decision.spec.run_name} {decision.reason}[/yellow]")
    if counts["failed"]:
        were = "experiment was" if counts["failed"] == 1 else "experiments were"
        console.print(f"[yellow]{counts['failed']} failed, timed-out, cancelled or diverged {were} not "
                      f"resubmitted: use --retry-failed (or `retry {plan.registry}`)[/yellow]")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
