"""Throughput the project has measured: completed runs, grouped by shape and partition.

``show`` estimates a run's wall time from these where it can, and from an assumed MFU (or a
CPU's ``cpu_throughput``) where it cannot. Two runs share a shape (``Shape``) when everything
that sets the speed of a training step is the same:

- ``workload``, ``total_params``, ``hidden_dim`` and ``num_layers``: the model's FLOPs per
  token, attention included (two models with one parameter count but another width and depth
  run at other speeds);
- ``seq_length`` and ``batch_per_gpu`` (``target_effective_batch_size / gpus``): the work of one
  rank's step, whatever the planner splits it into on a partition's memory;
- ``gpus``, ``compile`` and ``fsdp``: how it runs (``fsdp`` counts as ``none`` on one GPU, where
  the loop wraps the model in nothing whatever the spec says).

The learning rate, seed, data and token budget are left out: they change what is learned, not
how fast. A measured rate is used for a partition only from runs of that partition whose recorded
device is the partition's hardware (the config JSON's ``device_name`` names the profile's
``gpu_type``, or is ``cpu`` on a CPU partition): a GPU experiment trained on a laptop's CPU with
the debug backend measures the laptop.

The rate of a shape is the median ``tokens_per_s`` (all ranks) over the CSV rows of its latest
``LATEST_RUNS`` completed runs (by when their status.json was last written), each run's first
row left out (it may hold start-up: the first step's cuDNN autotuning, the data loader filling).
The median, not the mean, so that a row slowed by a busy file system or a neighbour on the node
moves nothing; the latest runs only, so that a grid of hundreds of runs of one shape costs a
few CSVs, and the speed is today's code's.

Cost: one pass over ``<results>/<folder>/config_*.json`` per invocation (``scan``); a status.json
only for a config whose shape is needed; a CSV only when its shape is first asked for. A torn
file is reported once (``report_unreadable``) and skipped; a config that records no shape (a
workload without these fields) is passed over. No pandas: the csv module.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path

from orchestrator.errors import report_unreadable
from orchestrator.paths import RunPaths, read_json, results_root

LATEST_RUNS = 10  # completed runs of a shape whose CSVs give its rate


@dataclasses.dataclass(frozen=True)
class Shape:
    """What sets the speed of a training step (see the module docstring)."""

    workload: str
    total_params: int
    hidden_dim: int
    num_layers: int
    seq_length: int
    batch_per_gpu: int
    gpus: int
    compile: bool
    fsdp: str

    def __post_init__(self):
        if self.gpus == 1:
            object.__setattr__(self, "fsdp", "none")

    @classmethod
    def of(cls, spec) -> Shape:
        return cls(spec.workload, spec.total_params, spec.hidden_dim, spec.num_layers, spec.seq_length,
                   spec.target_effective_batch_size // spec.gpus, spec.gpus, spec.compile, spec.fsdp)

    @classmethod
    def recorded(cls, config: dict) -> Shape:
        """The shape a run's config JSON records; ``gpus`` is the ranks it ran on (the plan's
        ``data_parallel``), which a debug run may have chosen unlike the spec. KeyError,
        TypeError or ValueError when a field is missing or of the wrong kind."""
        spec, derived, plan = config["spec"], config["derived"], config.get("plan") or {}
        gpus = int(plan.get("data_parallel") or spec["gpus"])
        if gpus <= 0 or spec["target_effective_batch_size"] % gpus:
            raise ValueError(f"{spec['target_effective_batch_size']} sequences a step on {gpus} ranks")
        return cls(str(spec["workload"]), int(derived["total_params"]), int(spec["hidden_dim"]),
                   int(spec["num_layers"]), int(spec["seq_length"]), spec["target_effective_batch_size"] // gpus,
                   gpus, bool(spec.get("compile", False)), str(spec.get("fsdp", "none")))


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A shape's measured speed on one partition."""

    tokens_per_s: float  # all ranks together: the median over ``rows``
    runs: tuple[str, ...]  # folder/label of each completed run that gave rows
    rows: int
    completed: int  # completed runs of the shape: the latest LATEST_RUNS of them were read

    def to_dict(self) -> dict:
        return {"tokens_per_s": self.tokens_per_s, "runs": list(self.runs), "rows": self.rows,
                "completed_runs": self.completed}


def on_partition_hardware(config: dict, profile) -> bool:
    """Whether the run's recorded device is the partition's kind (see the module docstring)."""
    name = str(config.get("device_name") or "").casefold()
    kind = profile.gpu_type.casefold()
    return name == "cpu" if kind == "cpu" else kind in name


class MeasuredThroughput:
    """The completed runs under a results root, by (partition, shape); rates read on demand."""

    def __init__(self, runs: dict[tuple[str, Shape], list[tuple[float, RunPaths]]]):
        self._runs = runs  # (when status.json was written, the run)
        self._rates: dict[tuple[str, Shape], Measurement | None] = {}

    @classmethod
    def scan(cls, needed: set[tuple[str, Shape]], profiles: dict, root: Path | None = None) -> MeasuredThroughput:
        """Index the completed runs of the (partition, shape) pairs in ``needed``, once.

        A run counts when its status.json says ``completed`` for the identity its config records,
        and its device is the partition's hardware (``on_partition_hardware``).
        """
        root = os.fspath(root or results_root())
        runs: dict[tuple[str, Shape], list[tuple[float, RunPaths]]] = {}
        if not needed:
            return cls(runs)
        for folder in _entries(root, directories=True):
            directory = os.path.join(root, folder)
            for name in _entries(directory, directories=False):
                if not (name.startswith("config_") and name.endswith(".json")):
                    continue
                # RunPaths' names, as strings until a run matches: a Path per file would cost more
                # than reading it, over thousands of runs
                label = name[len("config_"):-len(".json")]
                config = read_json(os.path.join(directory, name))
                if config is None:
                    continue
                try:
                    key = (str(config["spec"]["partition"]), Shape.recorded(config))
                except (KeyError, TypeError, ValueError, AttributeError):
                    continue  # not a shape this toolkit compares (another workload's fields, an old config)
                if key not in needed or not on_partition_hardware(config, profiles[key[0]]):
                    continue
                paths = RunPaths(Path(directory), label)
                status = read_json(paths.status_json) or {}
                if status.get("state") == "completed" and status.get("identity") in (None, config.get("identity")):
                    try:
                        written = paths.status_json.stat().st_mtime
                    except OSError:
                        continue
                    runs.setdefault(key, []).append((written, paths))
        return cls(runs)

    def get(self, partition: str, shape: Shape) -> Measurement | None:
        """The shape's measured rate on ``partition``, or None where no completed run has one."""
        key = (partition, shape)
        if key not in self._rates:
            self._rates[key] = self._measure(key)
        return self._rates[key]

    def _measure(self, key: tuple[str, Shape]) -> Measurement | None:
        rates, runs = [], []
        completed = sorted(self._runs.get(key, ()), key=lambda run: (run[0], str(run[1].config_json)))
        for _, paths in completed[-LATEST_RUNS:]:
            values = tokens_per_s_rows(paths.metrics_csv, ranks=key[1].gpus)
            if values:
                rates += values
                runs.append(f"{paths.folder.name}/{paths.label}")
        if not rates:
            return None
        rates.sort()
        middle = len(rates) // 2
        median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
        return Measurement(median, tuple(sorted(runs)), len(rates), len(completed))


def tokens_per_s_rows(path: Path, ranks: int) -> list[float]:
    """``tokens_per_s`` of every row but the first of a metrics CSV, where the row has one and ran
    on ``ranks`` ranks (a run resumed on other ranks measured another shape in those rows).

    A torn file (a last line cut short, a row of the wrong length, a rate that is not a positive
    number) is reported once and gives nothing: a cut number would read as a wrong rate.
    """
    try:
        text = Path(path).read_bytes().decode()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        report_unreadable(path, f"unreadable CSV: {exc}")
        return []
    if not text:
        report_unreadable(path, "empty file (not even a header)")
        return []
    if not text.endswith("\n"):
        report_unreadable(path, "truncated: the last line is incomplete")
        return []
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        report_unreadable(path, f"malformed CSV: {exc}")
        return []
    header, body = rows[0], rows[2:]  # rows[1]: the first logged step, start-up included
    if "tokens_per_s" not in header:
        return []
    rate_at = header.index("tokens_per_s")
    ranks_at = header.index("ranks") if "ranks" in header else None
    values = []
    for number, row in enumerate(body, start=3):
        if len(row) != len(header):
            report_unreadable(path, f"malformed CSV: line {number} has {len(row)} fields, the header {len(header)}")
            return []
        if not row[rate_at] or (ranks_at is not None and row[ranks_at] and _number(row[ranks_at]) != ranks):
            continue
        value = _number(row[rate_at])
        if not math.isfinite(value) or value <= 0:
            report_unreadable(path, f"malformed CSV: line {number} has tokens_per_s {row[rate_at]!r}")
            return []
        values.append(value)
    return values


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _entries(directory: str, directories: bool) -> list[str]:
    """Names in ``directory`` (folders, or files), none hidden or ``_``-prefixed (``_submitit``)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(e.name for e in entries if e.name[0] not in "._"
                          and (e.is_dir() if directories else e.is_file()))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        report_unreadable(directory, f"cannot list it: {exc}")
        return []
