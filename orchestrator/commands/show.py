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

Where the project has measured it, the speed comes from completed runs instead: runs under the
results root of the experiment's shape (model size, width, depth, sequence length, batch a GPU,
GPUs, compile, FSDP; ``orchestrator.throughput``) on that partition's hardware. The time is then
the tokens over their median ``tokens_per_s`` (on a CPU partition, plus its start-up and
validation tokens, as above); such a time is marked ``*``, and a footnote names the runs.

``show --table lingua`` prints, instead of a registry, lingua's model sizes
(``experiments.lingua.SCALING_SHAPES``, built with ``lingua_experim``) for every GPU count and
partition asked for: parameters, tokens a step, the time of ``--steps`` steps and the tokens a
second, measured where completed runs have the shape and at the assumed MFU where not.

Exit status 2 when an experiment does not fit its GPU even at batch 1, after the table
(or JSON), with the planner's one-line error for each on stderr.
"""

from __future__ import annotations

import json
import sys

from orchestrator import fmt
from orchestrator.errors import UsageError, unknown
from orchestrator.planner import plan_batch
from orchestrator.profiles import DEFAULT_MAX_REQUEUES, Profile, all_profiles
from orchestrator.registry import load_registry
from orchestrator.throughput import Measurement, MeasuredThroughput, Shape

ESTIMATE_PARTITIONS = ("sphinx", "miso")
COLUMNS = ["label", "width", "layers", "heads", "N", "N non-emb", "tokens D", "FLOPs", "lr", "mup",
           "partition", "batch x accum", "GPUs", "time"] + [f"time {p}" for p in ESTIMATE_PARTITIONS]
LEFT_COLUMNS = ("label", "partition")
TABLES = ("lingua",)
TABLE_OPTIONS = ("sizes", "gpus", "steps", "partition", "batch", "seq_len")
# the estimate's basis for one partition: completed runs of the shape, the profile's CPU
# measurement (named "measured" before runs were, and still so in the JSON), or the --mfu
MEASURED_RUNS, CPU_THROUGHPUT, ASSUMED_MFU = "measured_runs", "measured", "assumed_mfu"


def add_arguments(parser) -> None:
    parser.add_argument("registry", nargs="?", help="registry name, e.g. TRANSFORMER_SCALING (not with --table)")
    parser.add_argument("--mfu", type=float, default=0.3,
                        help="assumed model FLOPs utilisation where no completed run measured the speed (default 0.3)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    table = parser.add_argument_group("a table of model sizes instead of a registry")
    table.add_argument("--table", choices=TABLES, help="lingua: lingua's sizes (experiments/lingua.py)")
    table.add_argument("--sizes", help="comma-separated sizes (default: all of them, e.g. 27m,41m,85m,155m)")
    table.add_argument("--gpus", help="comma-separated GPU counts (default 1,8)")
    table.add_argument("--steps", type=int, help="optimizer steps to time (default 500)")
    table.add_argument("--partition", help=f"comma-separated partitions (default {','.join(ESTIMATE_PARTITIONS)})")
    table.add_argument("--batch", type=int, help="sequences a GPU a step (default 8, lingua's batch_size)")
    table.add_argument("--seq-len", type=int, help="tokens a sequence (default 2048)")


def eval_tokens(spec) -> int:
    """Validation tokens a whole run evaluates: ``eval_batches`` effective batches at every
    ``eval_interval_steps`` and at the last step (``workloads.loop``)."""
    steps, interval = spec.optimizer_steps, spec.eval_interval_steps
    evaluations = steps // interval + (1 if steps % interval else 0)
    return evaluations * spec.eval_batches * spec.target_effective_batch_size * spec.tokens_per_sample


def estimated_wall_s(spec, profile: Profile, mfu: float, measured: Measurement | None = None) -> float:
    """Wall time of one run on ``profile``'s partition.

    Measured by completed runs of the shape (``measured``): the tokens over their median rate,
    counted as below. A measured CPU (``cpu_throughput``): start-up, plus every training and
    validation token at the measured seconds per token, the tokens split over the run's
    processes (one thread each). Otherwise D x FLOPs per token / (GPUs x peak x MFU), the MFU
    the trainer logs. On a GPU, evaluation is left out (a few percent of the tokens, forward only).
    """
    cpu = profile.cpu_throughput
    if not type(spec).trains_in_process and (cpu is not None or spec.flops is None):
        return None  # a command's speed on a CPU is not ours to know, nor its time without N and D
    if measured is not None:
        tokens = spec.tokens if cpu is None else spec.tokens + cpu.eval_token_cost * eval_tokens(spec)
        return (0.0 if cpu is None else cpu.startup_s) + tokens / measured.tokens_per_s
    if cpu is None:
        return spec.tokens * spec.flops_per_token() / (spec.gpus * profile.peak_flops_per_gpu * mfu)
    per_token = cpu.seconds_per_token(spec.flops_per_token())
    tokens = spec.tokens + cpu.eval_token_cost * eval_tokens(spec)
    return cpu.startup_s + tokens * per_token / spec.gpus


def basis_of(profile: Profile, measured: Measurement | None) -> str:
    if measured is not None:
        return MEASURED_RUNS
    return CPU_THROUGHPUT if profile.cpu_throughput else ASSUMED_MFU


def estimate_partitions(spec, profiles) -> list[str]:
    return [name for name in dict.fromkeys((*ESTIMATE_PARTITIONS, spec.partition)) if name in profiles]


def measured_throughput(specs, profiles) -> MeasuredThroughput:
    """The completed runs of every shape the specs need, on every partition they are estimated on."""
    needed = {(name, Shape.of(spec)) for spec in specs for name in estimate_partitions(spec, profiles)}
    return MeasuredThroughput.scan(needed, profiles)


def experiment_row(spec, profiles, mfu: float, measured: MeasuredThroughput | None = None) -> dict:
    """One experiment. ``estimated_wall_s`` and ``estimate_bases`` by partition (bases:
    ``measured_runs``, ``measured`` for a CPU's ``cpu_throughput``, ``assumed_mfu``);
    ``estimate_basis``: the experiment's own partition's; ``measured_throughput``: the runs."""
    try:
        plan = (plan_batch(spec, profiles[spec.partition]).to_dict() if type(spec).trains_in_process
                else {"own": "the command plans its own batches"})
    except UsageError as exc:
        plan = {"error": str(exc)}
    shape = Shape.of(spec) if measured is not None and type(spec).trains_in_process else None
    estimates, bases, measurements = {}, {}, {}
    for name in estimate_partitions(spec, profiles):
        found = measured.get(name, shape) if shape is not None else None
        estimates[name] = estimated_wall_s(spec, profiles[name], mfu, found)
        bases[name] = basis_of(profiles[name], found) if estimates[name] is not None else "unknown"
        if found is not None:
            measurements[name] = found.to_dict()
    return {
        "label": spec.label, "folder_name": spec.folder_name, "identity": spec.identity,
        "workload": spec.workload, "hidden_dim": spec.hidden_dim, "num_layers": spec.num_layers,
        "num_heads": getattr(spec, "num_heads", None), **spec.derived(),
        "learning_rate": spec.learning_rate if "learning_rate" in spec.field_names() else None,
        "use_mup": getattr(spec, "use_mup", False), "partition": spec.partition,
        "gpus": spec.gpus, "time_min": spec.time_min, "plan": plan, "estimated_wall_s": estimates,
        "estimate_basis": bases[spec.partition], "estimate_bases": bases, "measured_throughput": measurements,
    }


def too_long(row: dict, max_requeues: int = DEFAULT_MAX_REQUEUES) -> str | None:
    """A warning when the estimate on the experiment's own partition exceeds what its time limit
    allows with every requeue (``time_min x (1 + max_requeues)``): it would end as ``timeout``."""
    estimate = row["estimated_wall_s"].get(row["partition"])
    allowed_s = row["time_min"] * 60 * (1 + max_requeues)
    if estimate is None or estimate <= allowed_s or "error" in row["plan"]:  # no fit: its error says enough
        return None
    basis = {CPU_THROUGHPUT: "at the measured CPU speed",
             MEASURED_RUNS: f"at the speed of {_runs(row.get('measured_throughput', {}).get(row['partition']))} "
                            f"of its shape"}.get(row.get("estimate_basis"), "at the assumed MFU")
    return (f"{row['label']} needs ~{fmt.duration(estimate)} on {row['partition']} {basis}, more than "
            f"its time_min {row['time_min']} x (1 + {max_requeues} requeues) = {fmt.duration(allowed_s)}")


def totals(rows: list[dict], profiles) -> dict[str, dict]:
    """Per partition: runs, GPU-seconds (on a CPU partition, process-seconds) and, for a local
    partition, about how long the whole registry trains with the local backend's parallelism
    (runs at once = one per CPU, as ``study`` and ``submit`` default to)."""
    from orchestrator.backends import default_parallel

    out: dict[str, dict] = {}
    for r in rows:
        seconds = r["estimated_wall_s"][r["partition"]]
        if "error" in r["plan"] or seconds is None:
            continue
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
    if args.table:
        if args.registry:
            raise UsageError(f"give a registry or --table, not both (got {args.registry!r} and --table {args.table})")
        return run_table(args)
    if not args.registry:
        raise UsageError("the following arguments are required: registry (or --table lingua); "
                         "python -m orchestrator list names the registries")
    given = [f"--{name.replace('_', '-')}" for name in TABLE_OPTIONS if getattr(args, name, None) is not None]
    if given:
        raise UsageError(f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} only with --table")
    specs = load_registry(args.registry, args.registry_module)
    profiles = all_profiles()
    measured = measured_throughput(specs, profiles)
    rows = [experiment_row(spec, profiles, args.mfu, measured) for spec in specs]
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
    total = sum(r["flops"] or 0 for r in rows)
    caption = (f"N: total (non-embedding) parameters; C = 6 N D; batch x accum from the memory planner on "
               f"the experiment's partition; time: on the experiment's partition; GPU times at {args.mfu:.0%} "
               f"MFU (6 N + 12 L d T FLOPs a token) of peak bf16 (A100 {profiles['sphinx'].peak_bf16_tflops:g}, "
               f"H200 {profiles['miso'].peak_bf16_tflops:g} TFLOP/s per GPU)")
    if any(MEASURED_RUNS in r["estimate_bases"].values() for r in rows):
        caption += ("; a time marked * comes from the measured speed of completed runs of the same shape "
                    "on that partition, instead (below)")
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
    lines = measured_footnotes(rows)
    for name in dict.fromkeys(r["partition"] for r in rows):
        cpu = profiles[name].cpu_throughput
        if cpu is not None and any(r["partition"] == name and r["estimate_basis"] == CPU_THROUGHPUT for r in rows):
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
            measured = sum(1 for r in rows if r["partition"] == name and "error" not in r["plan"]
                           and r["estimate_basis"] == MEASURED_RUNS)
            basis = "" if profiles[name].cpu_throughput else f" at {mfu:.0%} MFU"
            if measured:
                basis = (" from measured speeds" if measured == entry["runs"]
                         else f"{basis}, {measured} of them from measured speeds")
            lines.append(f"total on {name}: {runs}, {fmt.duration(entry['gpu_s'])} of GPU time{basis}")
    return lines


def measured_footnotes(rows: list[dict], most: int = 3) -> list[str]:
    """One line for each measurement a time marked * used: its rate, rows and runs, and which
    experiments it timed."""
    used: dict[tuple, tuple[dict, list[str]]] = {}
    for r in rows:
        for name, found in r["measured_throughput"].items():
            key = (name, found["tokens_per_s"], found["rows"], tuple(found["runs"]))
            used.setdefault(key, (found, []))[1].append(r["label"])
    return [f"* {name}: {fmt.count(found['tokens_per_s'])} tokens/s, the median tokens_per_s of {found['rows']} "
            f"CSV rows of {_runs(found)} of the same shape ({_some(found['runs'], most)}), for {_some(labels, most)}"
            for (name, *_), (found, labels) in used.items()]


def _runs(found: dict | None) -> str:
    """``3 completed runs``; ``10 of 250 completed runs`` where only the latest were read (or some
    CSV had no rates)."""
    n = len(found["runs"]) if found else 0
    total = found.get("completed_runs", n) if found else 0
    return f"{n}{f' of {total}' if total > n else ''} completed run{'s' if max(n, total) != 1 else ''}"


def _some(names, most: int) -> str:
    names = list(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def time_cell(r: dict, partition: str) -> str:
    if r["estimated_wall_s"][partition] is None:
        return "?"
    mark = "*" if r["estimate_bases"][partition] == MEASURED_RUNS else ""
    return fmt.duration(r["estimated_wall_s"][partition]) + mark


def table_cells(r: dict) -> list[str]:
    plan = r["plan"]
    batch = ("no fit" if "error" in plan else "own" if "own" in plan
             else f"{plan['batch_size']} x {plan['grad_accum']}")

    def known(value, show):
        return "?" if value is None else show(value)

    return [
        r["label"], known(r["hidden_dim"], str), known(r["num_layers"], str), known(r["num_heads"], str),
        known(r["total_params"], fmt.count), known(r["non_embedding_params"], fmt.count),
        known(r["tokens"], fmt.count), known(r["flops"], fmt.flops), known(r["learning_rate"], "{:.3g}".format),
        "yes" if r["use_mup"] else "no",
        r["partition"], batch, str(r["gpus"]), time_cell(r, r["partition"]),
        *(time_cell(r, p) for p in ESTIMATE_PARTITIONS)]


# ------------------------------------------------------------------ --table lingua
TABLE_COLUMNS = ["size", "dim", "layers", "heads", "N", "partition", "GPUs", "tokens/step", "time", "tokens/s",
                 "tokens/s/GPU", "MFU", "basis"]  # "time": of --steps steps, named so in the header
TABLE_LEFT = ("size", "partition", "basis")
DEFAULT_TABLE_GPUS = "1,8"
DEFAULT_TABLE_STEPS = 500


def run_table(args) -> int:
    """lingua's sizes x GPU counts x partitions: a table (or JSON) of what ``--steps`` steps cost."""
    rows, left_out = lingua_table_rows(args)
    steps = rows[0]["steps"]
    if args.json:
        print(json.dumps({"table": args.table, "steps": steps, "mfu": args.mfu, "rows": rows, "left_out": left_out},
                         indent=2))
        return 0
    profiles = all_profiles()
    peaks = ", ".join(f"{name} {profiles[name].gpu_type} {profiles[name].peak_bf16_tflops:g}"
                      for name in dict.fromkeys(r["partition"] for r in rows))
    first = rows[0]
    notes = [f"N: parameters as the trainer builds them (lingua_experim); tokens/step: {first['batch_per_gpu']} "
             f"sequences of {first['seq_length']} tokens a GPU; time: {steps} optimizer steps of training "
             f"(no evaluation, start-up or checkpoints on a GPU); MFU: of peak bf16 TFLOP/s a GPU ({peaks}), "
             f"counting 6 N + 12 L d T FLOPs a token; basis: the median tokens_per_s of completed runs of the "
             f"same shape on the partition where there are any (the MFU they reached), else {args.mfu:.0%} MFU "
             f"assumed (--mfu)"]
    if left_out:
        notes.append(f"left out: {'; '.join(left_out)}")
    for r in rows:
        found = r["measured_throughput"]
        if found:
            notes.append(f"{r['size']} on {r['partition']} x {r['gpus']}: the median of {found['rows']} CSV rows "
                         f"of {_runs(found)} ({_some(found['runs'], 3)})")
    cells = [[r["size"], str(r["dim"]), str(r["layers"]), str(r["heads"]), fmt.count(r["total_params"]),
              r["partition"], str(r["gpus"]), f"{r['tokens_per_step']:,}", fmt.duration(r["wall_s"]),
              fmt.count(r["tokens_per_s"]), fmt.count(r["tokens_per_s_per_gpu"]),
              "-" if r["mfu"] is None else f"{r['mfu']:.1%}", table_basis(r)] for r in rows]
    columns = [f"{steps} steps" if column == "time" else column for column in TABLE_COLUMNS]
    title = f"{args.table} sizes: the time of {steps} optimizer steps, {len(rows)} shapes"
    fmt.console().print(fmt.table_text(columns, cells, right=set(columns) - set(TABLE_LEFT), title=title,
                                       caption="\n".join(notes)), soft_wrap=True)
    return 0


def table_basis(r: dict) -> str:
    if r["basis"] == MEASURED_RUNS:
        return f"measured ({_runs(r['measured_throughput'])})"
    return "CPU throughput" if r["basis"] == CPU_THROUGHPUT else f"MFU {r['mfu']:.0%} assumed"


def lingua_table_rows(args) -> tuple[list[dict], list[str]]:
    """One row per size, GPU count and partition, each from a spec ``lingua_experim`` builds, so
    that N is what the trainer builds and the shape is what a run of it records. A GPU count
    above a partition's GPUs a job is left out on that partition (``--gpus 1,8`` with ``local``)."""
    from experiments.lingua import LINGUA_DATA_ROOT, SCALING_SHAPES
    from orchestrator.lingua import lingua_experim

    profiles = all_profiles()
    sizes = _choices("--sizes", "size", args.sizes, SCALING_SHAPES)
    partitions = _choices("--partition", "partition", args.partition, profiles, default=",".join(ESTIMATE_PARTITIONS))
    gpu_counts = [_positive("--gpus", g) for g in _names(args.gpus or DEFAULT_TABLE_GPUS, "--gpus")]
    steps = _positive("--steps", DEFAULT_TABLE_STEPS if args.steps is None else args.steps)
    batch = _positive("--batch", 8 if args.batch is None else args.batch)
    seq_len = _positive("--seq-len", 2048 if args.seq_len is None else args.seq_len)
    combos = [(size, gpus, partition) for size in sizes for gpus in gpu_counts for partition in partitions
              if gpus <= profiles[partition].max_gpus_per_job]
    left_out = [f"{gpus} GPUs on {name} (at most {profiles[name].max_gpus_per_job} a job)"
                for gpus in gpu_counts for name in partitions if gpus > profiles[name].max_gpus_per_job]
    if not combos:
        raise UsageError(f"no partition of {', '.join(partitions)} takes {', '.join(map(str, gpu_counts))} GPUs a job")
    specs = []
    for size, gpus, partition in combos:
        dim, layers, heads = SCALING_SHAPES[size]
        # the warmup only shapes the learning rate: it must fit in the steps, nothing more
        specs += lingua_experim(dim, layers, heads, steps=steps, batch_size=batch, seq_len=seq_len,
                                warmup=min(100, steps - 1), data_root=LINGUA_DATA_ROOT, gpus=gpus,
                                partition=partition, label=f"lingua_{size}_{partition}_{gpus}gpu",
                                folder_name="lingua_table")
    measured = measured_throughput(specs, profiles)
    rows = []
    for (size, _, _), spec in zip(combos, specs):
        profile = profiles[spec.partition]
        found = measured.get(spec.partition, Shape.of(spec))
        basis = basis_of(profile, found)
        if found is not None:
            rate = found.tokens_per_s
        elif profile.cpu_throughput is not None:
            rate = spec.gpus / profile.cpu_throughput.seconds_per_token(spec.flops_per_token())
        else:
            rate = spec.gpus * profile.peak_flops_per_gpu * args.mfu / spec.flops_per_token()
        mfu = rate * spec.flops_per_token() / (spec.gpus * profile.peak_flops_per_gpu)
        rows.append({
            "size": size, "dim": spec.hidden_dim, "layers": spec.num_layers, "heads": spec.num_heads,
            "total_params": spec.total_params, "partition": spec.partition, "gpus": spec.gpus,
            "batch_per_gpu": batch, "seq_length": spec.seq_length, "tokens_per_step": spec.tokens_per_step,
            "steps": spec.optimizer_steps, "wall_s": estimated_wall_s(spec, profile, args.mfu, found),
            "tokens_per_s": rate, "tokens_per_s_per_gpu": rate / spec.gpus,
            "mfu": None if profile.cpu_throughput is not None and found is None else mfu,
            "basis": basis, "measured_throughput": found.to_dict() if found else None,
        })
    return rows, left_out


def _names(text: str, option: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError(f"{option} needs at least one value, got {text!r}")
    return list(dict.fromkeys(names))


def _choices(option: str, kind: str, text: str | None, known, default: str | None = None) -> list[str]:
    names = _names(text or default or ",".join(known), option)
    for name in names:
        if name not in known:
            raise unknown(f"{kind} in {option}", name, known)
    return names


def _positive(option: str, value) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise UsageError(f"{option} must be positive integers, got {value!r}")
    return number
