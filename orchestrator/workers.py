"""How many data-loader worker processes a run should start.

Counts the CPUs this process may really use (its affinity mask, capped by
SLURM_CPUS_PER_TASK under Slurm), splits them across the ranks on the node, keeps one
per rank for the training process itself, and scales down on a shared machine (load
average above the CPUs we have). Workloads differ: the memory-mapped token stream of
the LM workloads needs at most a couple of workers.
"""

from __future__ import annotations

import os
from typing import Mapping

# workers one rank can use at most, by workload; anything unknown gets the smallest
MAX_WORKERS = {"transformer": 2, "lstm": 1}


def available_cpus(environ: Mapping[str, str] | None = None, affinity: int | None = None) -> int:
    environ = os.environ if environ is None else environ
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS
            affinity = os.cpu_count() or 1
    slurm = environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) > 0:
        return max(1, min(affinity, int(slurm)))
    return max(1, affinity)


def plan_workers(workload: str, ranks_per_node: int = 1, conservative: bool = False,
                 environ: Mapping[str, str] | None = None, affinity: int | None = None,
                 load_average: float | None = None) -> int:
    """Worker processes per rank; 0 means load batches in the training process.

    ``conservative`` forces 0: the safe choice on shared login nodes and when a
    job has hung in worker start-up before.
    """
    if conservative:
        return 0
    environ = os.environ if environ is None else environ
    cpus = available_cpus(environ, affinity)
    if "SLURM_CPUS_PER_TASK" in environ:
        per_rank = cpus  # Slurm gave this task its own CPUs
    else:
        per_rank = cpus // max(1, ranks_per_node)
    if load_average is None:
        load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load_average > cpus:  # others are using this machine: leave them room
        per_rank //= 2
    spare = per_rank - 1  # one CPU drives the model
    return max(0, min(spare, MAX_WORKERS.get(workload, 1)))
