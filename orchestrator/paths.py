"""Every file name of a run, in one place (like submitit's JobPaths).

    <results>/<folder_name>/<label>.csv          metrics, one row per logged optimizer step
    <results>/<folder_name>/config_<label>.json  resolved spec, identity, derived numbers, plan
    <results>/<folder_name>/<label>/             run directory
        spec.json      the spec the job runs (a job needs nothing else), and which submission runs it
        status.json    {"state": running|interrupted|completed|failed|timeout|diverged, "optimizer_step": ...}
        claim.json     the live attempt: job id, host, pid, start time, refreshed while it runs
        checkpoints/   resumable state
        grad_dotprods/ per-sample gradient dot products and the value table (method="graddotprod")
        logs/          scheduler stdout/stderr

The results root is ``$ORCHESTRATOR_RESULTS_DIR`` or ``./results``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from pathlib import Path

from orchestrator.errors import report_unreadable

RUN_STATES = ("running", "interrupted", "completed", "failed", "timeout", "cancelled", "diverged")


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
    def grad_dotprods_dir(self) -> Path:
        return self.run_dir / "grad_dotprods"

    @property
    def claim_json(self) -> Path:
        return self.run_dir / "claim.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", durable: bool = True):
    """A temp file in ``path``'s directory; on success it is fsynced and renamed over ``path``.

    Readers see the old file or the whole new one, never a torn one; on error the temp
    file is removed and ``path`` is untouched. The file gets 0o666 less the umask, like one
    ``open()`` creates: ``tempfile.mkstemp`` would make every result 0600, unreadable by
    the lab-mates who share the results folder. ``durable=False`` skips the fsync: still
    never torn for readers, but not guaranteed to survive a power cut (for files that are
    cheap to rewrite, written by the thousand).
    """
    directory, name = os.path.split(os.fspath(path))  # strings, not Paths: writes come by the thousand
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            continue
        except FileNotFoundError:  # make the directory only when it is missing
            os.makedirs(directory or ".", exist_ok=True)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    with atomic_file(path, durable=durable) as handle:
        handle.write(text)


def atomic_write_json(path: Path, data, durable: bool = True, compact: bool = False) -> None:
    """Indented for people by default; ``compact`` (one line) for the files a submit writes by
    the thousand: json's C encoder runs only without ``indent``, ~10x faster."""
    text = (json.dumps(data, sort_keys=True, default=str, separators=(",", ":")) if compact
            else json.dumps(data, indent=2, sort_keys=True, default=str))
    atomic_write_text(path, text + "\n", durable)


def create_or_replace_json(path: str, data) -> None:
    """Write a new file in place, replace an existing one atomically (compact, not fsynced).

    For the spec.json a submit writes into a thousand new run directories: no reader looks
    at one before its held job is released, so a new file needs no temp file and rename
    (that halves the cost); an existing one may be read by a running job and is replaced."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":")) + "\n"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return atomic_write_text(path, text, durable=False)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return None
    raise FileNotFoundError(path)


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None if it does not exist. A torn or foreign file (not a
    JSON object) is reported once by path and read as absent, never deleted or rewritten."""
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        report_unreadable(path, f"{type(exc).__name__}: {exc}")
        return None
    if not isinstance(data, dict):
        report_unreadable(path, f"expected a JSON object, found {type(data).__name__}")
        return None
    return data


def read_status(paths: RunPaths) -> dict | None:
    """The run's status.json, or None if the run never started (or it is unreadable)."""
    return read_json(paths.status_json)
