"""Show every experiment of a registry: its shape, budget, batch plan and estimated cost.

Wall time is estimated as C / (GPUs x peak bf16 FLOP/s x utilisation) on each GPU
partition; the utilisation (model FLOPs utilisation, MFU) is an assumption, set
with --mfu. Small models reach far less than large ones.

Exit status 2 when an experiment does not fit its GPU even at batch 1, after the table
(or JSON), with the planner's one-line error for each on stderr.
"""

from __future__ import annotations

import json
import sys

from orchestrator import fmt
from orchestrator.errors import UsageError
from orchestrator.planner import plan_batch
from orchestrator.profiles import DEFAULT_MAX_REQUEUES, all_profiles
from orchestrator.registry import load_registry

ESTIMATE_PARTITIONS = ("sphinx", "miso")
COLUMNS = ["label", "width", "layers", "heads", "N", "N non-emb", "tokens D", "FLOPs", "lr", "mup",
           "partition", "batch x accum", "GPUs"] + [f"time {p}" for p in ESTIMATE_PARTITIONS]
LEFT_COLUMNS = ("label", "partition")


def add_arguments(parser) -> None:
    parser.add_argument("registry", help="registry name, e.g. TRANSFORMER_SCALING")
    parser.add_argument("--mfu", type=float, default=0.3,
                        help="assumed model FLOPs utilisation for the wall-time estimate (default 0.3)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def experiment_row(spec, profiles, mfu: float) -> dict:
    try:
        plan = plan_batch(spec, profiles[spec.partition]).to_dict()
    except UsageError as exc:
        plan = {"error": str(exc)}
    estimates = {}
    for name in ESTIMATE_PARTITIONS:
        if name in profiles:
            peak = spec.gpus * profiles[name].peak_flops_per_gpu * mfu
            estimates[name] = spec.flops / peak
    return {
        "label": spec.label, "folder_name": spec.folder_name, "identity": spec.identity,
        "workload": spec.workload, "hidden_dim": spec.hidden_dim, "num_layers": spec.num_layers,
        "num_heads": getattr(spec, "num_heads", None), **spec.derived(),
        "learning_rate": spec.learning_rate, "use_mup": spec.use_mup, "partition": spec.partition,
        "gpus": spec.gpus, "time_min": spec.time_min, "plan": plan, "estimated_wall_s": estimates,
    }


def too_long(row: dict, max_requeues: int = DEFAULT_MAX_REQUEUES) -> str | None:
    """A warning when the estimate on the experiment's own partition exceeds what its time limit
    allows with every requeue (``time_min x (1 + max_requeues)``): it would end as ``timeout``."""
    estimate = row["estimated_wall_s"].get(row["partition"])
    allowed_s = row["time_min"] * 60 * (1 + max_requeues)
    if estimate is None or estimate <= allowed_s or "error" in row["plan"]:  # no fit: its error says enough
        return None
    return (f"{row['label']} needs ~{fmt.duration(estimate)} on {row['partition']} at the assumed MFU, more than "
            f"its time_min {row['time_min']} x (1 + {max_requeues} requeues) = {fmt.duration(allowed_s)}")


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
        print(json.dumps({"registry": args.registry, "mfu": args.mfu, "experiments": rows}, indent=2))
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
               f"the experiment's partition; wall time at {args.mfu:.0%} MFU of peak bf16 "
               f"(A100 {profiles['sphinx'].peak_bf16_tflops:g}, H200 {profiles['miso'].peak_bf16_tflops:g} "
               f"TFLOP/s per GPU)")
    text = fmt.table_text(COLUMNS, [table_cells(r) for r in rows], right=set(COLUMNS) - set(LEFT_COLUMNS),
                          title=f"{args.registry}: {len(rows)} experiments, {fmt.flops(total)} FLOPs",
                          caption=caption, style_of=lambda column, cell: "red" if cell == "no fit" else None)
    # soft wrap: a terminal narrower than the table folds lines rather than rich re-wrapping words
    fmt.console().print(text, soft_wrap=True)


def table_cells(r: dict) -> list[str]:
    plan = r["plan"]
    batch = "no fit" if "error" in plan else f"{plan['batch_size']} x {plan['grad_accum']}"
    return [
        r["label"], str(r["hidden_dim"]), str(r["num_layers"]),
        "-" if r["num_heads"] is None else str(r["num_heads"]),
        fmt.count(r["total_params"]), fmt.count(r["non_embedding_params"]), fmt.count(r["tokens"]),
        fmt.flops(r["flops"]), f"{r['learning_rate']:.3g}", "yes" if r["use_mup"] else "no",
        r["partition"], batch, str(r["gpus"]),
        *(fmt.duration(r["estimated_wall_s"][p]) for p in ESTIMATE_PARTITIONS)]
