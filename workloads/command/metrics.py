"""Adapters from a command's own metrics log to the standard metrics CSV (``workloads.runfiles.COLUMNS``).

- ``lingua``: lingua's ``metrics.jsonl``, one flattened JSON object per logged step (keys in
  ``LINGUA_KEYS``). Its ``speed/wps`` is per GPU (tokens of one rank per second), its
  ``optim/total_tokens`` counts every rank's tokens, its memory peaks are in GiB.
- ``jsonl``: JSON objects, one a line; nested objects are flattened with "/" (``{"optim": {"lr":
  1}}`` is ``optim/lr``). ``metrics_keys`` maps our columns to its keys.
- ``csv``: a CSV with a header line; ``metrics_keys`` maps our columns to its columns.

``optimizer_step`` and ``loss`` must be mapped; ``tokens_processed`` too unless the spec gives
``tokens_per_step``. Filled in where the log does not say: ``tokens_processed`` = step x
``tokens_per_step``; ``tokens_per_s`` and ``tokens_per_s_per_gpu`` from each other (x or / the
run's GPUs); ``theoretical_flops_chinchilla`` = 6 N D and ``mfu`` = tokens/s x 6 N / (GPUs x
peak), when the spec gives ``params`` (N); ``ranks`` = the run's GPUs.

``MetricsTail`` reads the file as it grows: whole lines only (a line still being written is
read on the next poll), a line that is not a JSON object (or a row with an unreadable step) is
reported once and skipped. A file that shrinks was rewritten: it is read again from the start.
A trainer that resumes from a checkpoint logs some steps again; a row whose step is not after
the previous one replaces the rows from that step on (``Row.replaces``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

from orchestrator.errors import UsageError, report_unreadable
from workloads.runfiles import COLUMNS

GIB_IN_GB = 2 ** 30 / 1e9
# our column -> (lingua's key, factor)
LINGUA_KEYS = {
    "optimizer_step": ("global_step", 1),
    "tokens_processed": ("optim/total_tokens", 1),
    "loss": ("loss/out", 1),
    "learning_rate": ("optim/lr", 1),
    "grad_norm": ("optim/grad_norm", 1),
    "tokens_per_s_per_gpu": ("speed/wps", 1),
    "step_time_s": ("speed/curr_iter_time", 1),
    "data_wait_s": ("speed/data_load_time", 1),
    "peak_mem_allocated_gb": ("memory/max_active_gib", GIB_IN_GB),
    "peak_mem_reserved_gb": ("memory/max_reserved_gib", GIB_IN_GB),
}
LINGUA_FLOPS_KEY = "speed/FLOPS"  # lingua's per-GPU FLOP/s: MFU when the spec gives no N
INTEGER_COLUMNS = ("optimizer_step", "tokens_processed", "ranks")


def check_keys(metrics_format: str, keys: dict | None, tokens_per_step: int | None) -> None:
    """The spec's ``metrics_keys`` for its format, or a UsageError naming what is wrong."""
    if metrics_format == "lingua":
        if keys:
            raise UsageError(f"metrics_format 'lingua' reads lingua's own keys; metrics_keys is for jsonl and csv, "
                             f"got {dict(keys)!r}")
        return
    keys = keys or {}
    for column in keys:
        if column not in COLUMNS:
            raise UsageError(f"metrics_keys: {column!r} is not a metrics column; columns: {', '.join(COLUMNS)}")
    needed = ["optimizer_step", "loss"] + ([] if tokens_per_step else ["tokens_processed"])
    missing = [column for column in needed if column not in keys]
    if missing:
        raise UsageError(f"metrics_format {metrics_format!r} needs metrics_keys for {', '.join(missing)}"
                         + (" (or tokens_per_step)" if "tokens_processed" in missing else "")
                         + f", e.g. metrics_keys={{{', '.join(repr(c) + ': ...' for c in missing)}}}")


def flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _number(value):
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


@dataclasses.dataclass
class Row:
    values: dict
    replaces: bool  # its step is not after the previous row's: it supersedes the rows from there


class MetricsTail:
    """The rows of a growing metrics file, as standard CSV rows."""

    def __init__(self, path, spec, peak_flops_per_gpu: float):
        self.path = os.fspath(path)
        self.spec = spec
        self.peak = peak_flops_per_gpu
        self.offset = 0
        self.header: list[str] | None = None
        self.last_step: int | None = None
        self.reported: set[int] = set()
        if spec.metrics_format == "lingua":
            self.keys = dict(LINGUA_KEYS)
        else:
            self.keys = {column: (key, 1) for column, key in spec.metrics_keys.items()}

    def read(self) -> list[Row]:
        """The rows written since the last call."""
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self.offset:  # rewritten: read it again
                    self.offset, self.header, self.last_step = 0, None, None
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        rows, position = [], self.offset
        self.offset += end
        for line in data[:end].splitlines(keepends=True):
            row = self._parse(line.decode("utf-8", errors="replace"), position)
            position += len(line)
            if row is not None:
                rows.append(row)
        return rows

    def _parse(self, line: str, offset: int) -> Row | None:
        if not line.strip():
            return None
        if self.spec.metrics_format == "csv":
            fields = next(csv.reader(io.StringIO(line)))
            if self.header is None:
                self.header = fields
                missing = [key for key, _ in self.keys.values() if key not in fields]
                if missing:
                    self._report(offset, f"no column {', '.join(map(repr, missing))} in the header {fields}")
                return None
            record = dict(zip(self.header, fields))
        else:
            try:
                record = json.loads(line)
            except ValueError as exc:
                return self._report(offset, f"not JSON ({exc})")
            if not isinstance(record, dict):
                return self._report(offset, f"expected a JSON object, found {type(record).__name__}")
            record = flatten(record)
        return self._row(record, offset)

    def _row(self, record: dict, offset: int) -> Row | None:
        values = {}
        for column, (key, factor) in self.keys.items():
            number = _number(record.get(key))
            if number is not None:
                values[column] = number * factor
        step = values.get("optimizer_step")
        if step is None or not step.is_integer() or step < 0:
            return self._report(offset, f"no usable step ({self.keys['optimizer_step'][0]!r} is "
                                        f"{record.get(self.keys['optimizer_step'][0])!r})")
        if values.get("loss") is None:
            return self._report(offset, f"step {int(step)} has no loss ({self.keys['loss'][0]!r})")
        self._fill(values, record)
        for column in INTEGER_COLUMNS:
            if values.get(column) is not None and math.isfinite(values[column]):
                values[column] = int(values[column])
        replaces = self.last_step is not None and values["optimizer_step"] <= self.last_step
        self.last_step = values["optimizer_step"]
        return Row(values, replaces)

    def _fill(self, values: dict, record: dict) -> None:
        spec, gpus = self.spec, self.spec.gpus
        values["ranks"] = gpus
        if values.get("tokens_processed") is None and spec.tokens_per_step:
            values["tokens_processed"] = values["optimizer_step"] * spec.tokens_per_step
        if values.get("tokens_per_s") is None and values.get("tokens_per_s_per_gpu") is not None:
            values["tokens_per_s"] = values["tokens_per_s_per_gpu"] * gpus
        if values.get("tokens_per_s_per_gpu") is None and values.get("tokens_per_s") is not None:
            values["tokens_per_s_per_gpu"] = values["tokens_per_s"] / gpus
        if spec.params and values.get("tokens_processed") is not None:
            values["theoretical_flops_chinchilla"] = 6 * spec.params * values["tokens_processed"]
        if values.get("mfu") is None:
            if spec.params and values.get("tokens_per_s") is not None:
                values["mfu"] = float(f"{values['tokens_per_s'] * 6 * spec.params / (gpus * self.peak):.6g}")
            elif spec.metrics_format == "lingua" and _number(record.get(LINGUA_FLOPS_KEY)) is not None:
                values["mfu"] = float(f"{_number(record[LINGUA_FLOPS_KEY]) / self.peak:.6g}")

    def _report(self, offset: int, problem: str) -> None:
        if offset not in self.reported:
            self.reported.add(offset)
            report_unreadable(f"{self.path} (byte {offset})", f"{problem}; line skipped")
        return None
