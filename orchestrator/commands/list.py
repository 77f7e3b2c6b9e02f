"""List every registry with its number of experiments and total training compute."""

from __future__ import annotations

import json

from orchestrator import fmt
from orchestrator.registry import all_registries


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    registries = all_registries(args.registry_module)
    rows = [{
        "registry": name,
        "experiments": len(specs),
        "workloads": sorted({s.workload for s in specs}),
        "partitions": sorted({s.partition for s in specs}),
        "total_flops": sum(s.flops for s in specs),
    } for name, specs in sorted(registries.items())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title="Experiment registries", caption="FLOPs: C = 6 N D summed over the registry")
    for column, justify in (("registry", "left"), ("experiments", "right"), ("workloads", "left"),
                            ("partitions", "left"), ("total FLOPs", "right")):
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(row["registry"], str(row["experiments"]), ", ".join(row["workloads"]),
                      ", ".join(row["partitions"]), fmt.flops(row["total_flops"]))
    fmt.console().print(table)
    return 0
