"""Show every experiment of a registry: its shape, budget, batch plan and estimated cost.

Wall time is estimated on the partition each experiment runs on ("time"), and on sphinx
(A100) and miso (H200) for comparison. On a GPU partition it is D x FLOPs per token /
(GPUs x peak bf16 FLOP/s x utilisation), with the FLOPs per token of the MFU the trainer logs
(``spec.flops_per_token()``: 6 N + 12 L d T for a transformer, whose attention term C = 6 N D
leaves out and which matters at long sequences); the utilisation (model FLOPs utilisation,
MFU) is an assumption, set with --mfu, and small models reach far less than large ones. On a partition whose profile
carries a measured ``cpu_throughput`` (``local``) it comes from that measurement instead
(``estimated_wall_s``), and a footnote says how it was measured. Under the table, the total
for each partition; for a local one, divided among the runs the local backend trains at once.

Exit status 2 when an experiment does not fit its GPU even at batch 1, after the table
(or JSON), with the planner's one-line error for each on stderr.
"""

from __future__ import annotations

import json
import sys

from orchestrator import fmt
from orchestrator.errors import UsageError
from orchestrator.planner import plan_batch
from orchestrator.profiles import DEFAULT_MAX_REQUEUES, Profile, all_profiles
from orchestrator.registry import load_registry

ESTIMATE_PARTITIONS = ("sphinx", "miso")
COLUMNS = ["label", "width", "layers", "heads", "N", "N non-emb", "tokens D", "FLOPs", "lr", "mup",
           "partition", "batch x accum", "GPUs", "time"] + [f"time {p}" for p in ESTIMATE_PARTITIONS]
LEFT_COLUMNS = ("label", "partition")


def add_arguments(parser) -> None:
    parser.add_argument("registry", help="registry name, e.g. TRANSFORMER_SCALING")
    parser.add_argument("--mfu", type=float, default=0.3,
                        help="assumed model FLOPs utilisation for the wall-time estimate (default 0.3)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def eval_tokens(spec) -> int:
    """Validation tokens a whole run evaluates: ``eval_batches`` effective batches at every
    ``eval_interval_steps`` and at the last step (``workloads.loop``)."""
    steps, interval = spec.optimizer_steps, spec.eval_interval_steps
    evaluations = steps // interval + (1 if steps % interval else 0)
    return evaluations * spec.eval_batches * spec.target_effective_batch_size * spec.seq_length


def estimated_wall_s(spec, profile: Profile, mfu: float) -> float:
    """Wall time of one run on ``profile``'s partition.

    A measured CPU (``cpu_throughput``): start-up, plus every training and validation token
    at the measured seconds per token, the tokens split over the run's processes (one
    thread each). Otherwise D x FLOPs per token / (GPUs x peak x MFU), the MFU the trainer logs.
    """
    cpu = profile.cpu_throughput
    if cpu is None:
        return spec.tokens * spec.flops_per_token() / (spec.gpus * profile.peak_flops_per_gpu * mfu)
    per_token = cpu.seconds_per_token(spec.flops_per_token())
    tokens = spec.tokens + cpu.eval_token_cost * eval_tokens(spec)
    return cpu.startup_s + tokens * per_token / spec.gpus


def experiment_row(spec, profiles, mfu: float) -> dict:
    try:
        plan = plan_batch(spec, profiles[spec.partition]).to_dict()
    except UsageError as exc:
        plan = {"error": str(exc)}
    estimates = {name: estimated_wall_s(spec, profiles[name], mfu)
                 for name in (*ESTIMATE_PARTITIONS, spec.partition) if name in profiles}
    basis = "measured" if profiles[spec.partition].cpu_throughput else "assumed_mfu"
    return {
        "label": spec.label, "folder_name": spec.folder_name, "identity": spec.identity,
        "workload": spec.workload, "hidden_dim": spec.hidden_dim, "num_layers": spec.num_layers,
        "num_heads": getattr(spec, "num_heads", None), **spec.derived(),
        "learning_rate": spec.learning_rate, "use_mup": spec.use_mup, "partition": spec.partition,
        "gpus": spec.gpus, "time_min": spec.time_min, "plan": plan, "estimated_wall_s": estimates,
        "estimate_basis": basis,
    }


def too_long(row: dict, max_requeues: int = DEFAULT_MAX_REQUEUES) -> str | None:
    """A warning when the estimate on the experiment's own partition exceeds what its time limit
    allows with every requeue (``time_min x (1 + max_requeues)``): it would end as ``timeout``."""
    estimate = row["estimated_wall_s"].get(row["partition"])
    allowed_s = row["time_min"] * 60 * (1 + max_requeues)
    if estimate is None or estimate <= allowed_s or "error" in row["plan"]:  # no fit: its error says enough
        return None
    basis = "at the measured CPU speed" if row.get("estimate_basis") == "measured" else "at the assumed MFU"
    return (f"{row['label']} needs ~{fmt.duration(estimate)} on {row['partition']} {basis}, more than "
            f"its time_min {row['time_min']} x (1 + {max_requeues} requeues) = {fmt.duration(allowed_s)}")


def totals(rows: list[dict], profiles) -> dict[str, dict]:
    """Per partition: runs, GPU-seconds (on a CPU partition, process-seconds) and, for a local
    partition, about how long the whole registry trains with the local backend's parallelism
    (runs at once = one per CPU, as ``study`` and ``submit`` default to)."""
    from orchestrator.backends import default_parallel

    out: dict[str, dict] = {}
    for r in rows:
        if "error" in r["plan"]:
            continue
        seconds = r["estimated_wall_s"][r["partition"]]
        entry = out.setdefault(r["partition"], {"runs": 0, "gpu_s": 0.0, "longest_s": 0.0})
        entry["runs"] += 1
        entry["gpu_s"] += seconds * r["gpus"]
        entry["longest_s"] = max(entry["longest_s"], seconds)
    for name, entry in out.items():
        parallel = default_parallel(profiles[name].backend) if profiles[name].backend == "local" else None
        entry["parallel"] = parallel
        # list scheduling on `parallel` slots: no sooner than the work spread evenly, nor the longest run
        entry["wall_s"] = max(entry["gpu_s"] / parallel, entry["longest_s"]) if parallel else None
    return out


def run(args) -> int:
    """The table (or JSON), then one ``error:`` line on stderr per experiment that fits nowhere.

    Exit status 2 when any experiment does not fit its GPU even at batch 1: submit would
    refuse it, so a script that shows a registry before submitting it should stop too.
    """
    if not 0 < args.mfu <= 1:
        raise UsageError(f"--mfu must be in (0, 1], got {args.mfu}")
    specs = load_registry(args.registry, args.registry_module)
    profiles = all_profiles()
    rows = [experiment_row(spec, profiles, args.mfu) for spec in specs]
    if args.json:
        print(json.dumps({"registry": args.registry, "mfu": args.mfu, "experiments": rows,
                          "totals": totals(rows, profiles)}, indent=2))
    else:
        print_table(args, rows, profiles)
    errors = [r["plan"]["error"] for r in rows if "error" in r["plan"]]
    sys.stdout.flush()  # the table first, then warnings and errors, when both go to one terminal
    for warning in filter(None, map(too_long, rows)):
        print(f"warning: {warning}", file=sys.stderr)
    if not errors:
        return 0
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 2


def print_table(args, rows: list[dict], profiles) -> None:
    total = sum(r["flops"] for r in rows)
    caption = (f"N: total (non-embedding) parameters; C = 6 N D; batch x accum from the memory planner on "
               f"the experiment's partition; time: on the experiment's partition; GPU times at {args.mfu:.0%} "
               f"MFU (6 N + 12 L d T FLOPs a token) of peak bf16 (A100 {profiles['sphinx'].peak_bf16_tflops:g}, "
               f"H200 {profiles['miso'].peak_bf16_tflops:g} TFLOP/s per GPU)")
    notes = [caption] + footnotes(rows, profiles, args.mfu)
    text = fmt.table_text(COLUMNS, [table_cells(r) for r in rows], right=set(COLUMNS) - set(LEFT_COLUMNS),
                          title=f"{args.registry}: {len(rows)} experiments, {fmt.flops(total)} FLOPs",
                          caption="\n".join(notes),
                          style_of=lambda column, cell: "red" if cell == "no fit" else None)
    # soft wrap: a terminal narrower than the table folds lines rather than rich re-wrapping words
    fmt.console().print(text, soft_wrap=True)


def footnotes(rows: list[dict], profiles, mfu: float) -> list[str]:
    """How each measured partition's times were estimated (the measurement named), then the
    total time on each partition the registry uses."""
    lines = []
    for name in dict.fromkeys(r["partition"] for r in rows):
        cpu = profiles[name].cpu_throughput
        if cpu is not None:
            lines.append(f"time on {name}: measured: {cpu.startup_s:g} s start-up a run, then per token "
                         f"{cpu.overhead_us_per_token:g} us + (6 N + 12 L T d) FLOPs at {cpu.gflops_per_s:g} GFLOP/s "
                         f"a process (a validation token x {cpu.eval_token_cost:g}); {cpu.measured}")
    for name, entry in totals(rows, profiles).items():
        runs = f"{entry['runs']} run{'s' if entry['runs'] != 1 else ''}"
        if entry["parallel"]:
            lines.append(f"total on {name}: {runs}, {fmt.duration(entry['gpu_s'])} of process time; about "
                         f"{fmt.duration(entry['wall_s'])} with {entry['parallel']} at once (the local backend's "
                         f"default --parallel, one per CPU)")
        else:
            basis = "" if profiles[name].cpu_throughput else f" at {mfu:.0%} MFU"
            lines.append(f"total on {name}: {runs}, {fmt.duration(entry['gpu_s'])} of GPU time{basis}")
    return lines


def table_cells(r: dict) -> list[str]:
    plan = r["plan"]
    batch = "no fit" if "error" in plan else f"{plan['batch_size']} x {plan['grad_accum']}"
    return [
        r["label"], str(r["hidden_dim"]), str(r["num_layers"]),
        "-" if r["num_heads"] is None else str(r["num_heads"]),
        fmt.count(r["total_params"]), fmt.count(r["non_embedding_params"]), fmt.count(r["tokens"]),
        fmt.flops(r["flops"]), f"{r['learning_rate']:.3g}", "yes" if r["use_mup"] else "no",
        r["partition"], batch, str(r["gpus"]), fmt.duration(r["estimated_wall_s"][r["partition"]]),
        *(fmt.duration(r["estimated_wall_s"][p]) for p in ESTIMATE_PARTITIONS)]
