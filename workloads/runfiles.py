"""The files a trainer keeps in its run directory, beside the checkpoints: the metrics CSV, status.json,
and the facts the config JSON records. No torch: the command workload's supervisor writes them too.

Metrics CSV columns (``COLUMNS``; new columns are only ever appended, readers go by name) are
described in ``workloads/loop.py``.
"""

from __future__ import annotations

import csv
import io
import subprocess
import time
from pathlib import Path

from orchestrator.paths import RunPaths, atomic_write_json, atomic_write_text
from orchestrator.spec import load_spec

FINAL_STATES = ("completed", "diverged")  # a run in one of these is never trained again
COLUMNS = ("optimizer_step", "tokens_processed", "loss", "val_loss", "learning_rate", "grad_norm",
           "theoretical_flops_chinchilla", "tokens_per_s", "elapsed_s", "tokens_per_s_per_gpu", "mfu",
           "step_time_s", "data_wait_s", "peak_mem_allocated_gb", "peak_mem_reserved_gb", "peak_rss_gb", "ranks",
           "samples_per_s")


class MetricsCSV:
    """Appended as rows are logged; rewritten atomically when reopened and when closed."""

    def __init__(self, path: Path, keep_through_step: int, columns: tuple[str, ...] = COLUMNS):
        self.path = path
        self.columns = columns
        self.rows: list[dict] = []
        if keep_through_step > 0 and path.exists():
            with open(path, newline="") as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(r["optimizer_step"]) <= keep_through_step]
        self._rewrite()
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, columns, restval="", extrasaction="ignore")

    def append(self, row: dict) -> None:
        row = {key: "" if row.get(key) is None else row[key] for key in self.columns}
        self.rows.append(row)
        self._writer.writerow(row)
        self._file.flush()

    def drop_from(self, step: int) -> None:
        """Forget the rows at ``step`` and later (a resumed trainer logs them again)."""
        kept = [row for row in self.rows if int(row["optimizer_step"]) < step]
        if len(kept) < len(self.rows):
            self.rows = kept
            self._file.close()
            self._rewrite()
            self._file = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._file, self.columns, restval="", extrasaction="ignore")

    def close(self) -> None:
        self._file.close()
        self._rewrite()

    def _rewrite(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, self.columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, text.getvalue())


def spec_identity(path: Path) -> str | None:
    try:
        return load_spec(path).identity
    except (OSError, ValueError):
        return None


def write_status(paths: RunPaths, spec, state: str, step: int, **extra) -> dict:
    status = {"state": state, "identity": spec.identity, "run": spec.run_name, "optimizer_step": step,
              "total_steps": spec.optimizer_steps, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    atomic_write_json(paths.status_json, status)
    return status


def git_commit(directory: Path | None = None) -> str | None:
    """HEAD of the git checkout holding ``directory`` (default: this code), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


