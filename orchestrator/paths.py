"""Every file name of a run, in one place (like submitit's JobPaths).

    <results>/<folder_name>/<label>.csv          metrics, one row per logged optimizer step
    <results>/<folder_name>/config_<label>.json  resolved spec, identity, derived numbers, plan
    <results>/<folder_name>/<label>/             run directory
        spec.json      the spec the job runs (a job needs nothing else)
        status.json    {"state": running|completed|failed|diverged, "optimizer_step": ..., ...}
        checkpoints/   resumable state
        logs/          scheduler stdout/stderr

The results root is ``$ORCHESTRATOR_RESULTS_DIR`` or ``./results``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path

RUN_STATES = ("running", "completed", "failed", "diverged")


def results_root() -> Path:
    return Path(os.environ.get("ORCHESTRATOR_RESULTS_DIR") or "results")


@dataclasses.dataclass(frozen=True)
class RunPaths:
    folder: Path  # <results>/<folder_name>
    label: str

    @classmethod
    def of(cls, folder_name: str, label: str, root: Path | None = None) -> RunPaths:
        return cls(Path(root or results_root()) / folder_name, label)

    @property
    def metrics_csv(self) -> Path:
        return self.folder / f"{self.label}.csv"

    @property
    def config_json(self) -> Path:
        return self.folder / f"config_{self.label}.json"

    @property
    def run_dir(self) -> Path:
        return self.folder / self.label

    @property
    def spec_json(self) -> Path:
        return self.run_dir / "spec.json"

    @property
    def status_json(self) -> Path:
        return self.run_dir / "status.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w"):
    """A temp file in ``path``'s directory; on success it is fsynced and renamed over ``path``.

    Readers see the old file or the whole new one, never a torn one; on error the temp
    file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_status(paths: RunPaths) -> dict | None:
    """The run's status.json, or None if the run never started (or it is unreadable)."""
    try:
        return json.loads(paths.status_json.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
