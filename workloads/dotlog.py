"""What a GradDotProd run writes about its training samples, and how it is read back.

Layout, in the run directory (``RunPaths.grad_dotprods_dir``)::

    grad_dotprods/
        rank000_steps00000001-00000010.npz   one chunk per rank per save: the steps first..last
        ...
        values.csv                           the per-example value table, written at the end

Each chunk holds equal-length arrays, one row per training sample and optimizer step (the
``COLUMNS``). ``dot`` is ``<grad l(w, z_i), grad L_val(w)>`` over every trainable parameter,
with ``l(w, z_i)`` the sample's mean token loss and ``L_val`` the mean loss of the step's
validation rows (all ranks), both at the weights before the step, and ``lr`` the base scheduled
rate (muP groups scale it). To first order, the step changes the validation loss by ``-lr * dot``
on the sample's account (Wang et al., ICLR 2025: the first-order In-Run Data Shapley term of the
utility "validation loss"). The value table counts it with the sign of a value, ``value = lr *
dot`` summed over the steps, the validation-loss *reduction* credited to the sample: positive
helps, negative hurts, and the harmful examples rank lowest; ``val_loss_change`` is the same sum
with the loss's sign (``-lr * dot``).

``example`` names the training window the sample was: the same example seen in two epochs is
two samples (two sample indices) of one example, and the value table sums over them.

Chunks are written atomically and are never appended to; a rank writes at the same steps as the
others (every ``dot_prod_save_interval`` steps, before each checkpoint and at the end). When a
run resumes from the checkpoint of step s, ``truncate_after(s)`` drops every row past s, so no
step is ever logged twice. Only numpy here: ``analyze``-side readers import no torch.
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from orchestrator.errors import UsageError
from orchestrator.paths import atomic_file

COLUMNS = {"step": np.int64, "sample": np.int64, "example": np.int64, "rank": np.int32,
           "dot": np.float64, "loss": np.float64, "lr": np.float64, "val_loss": np.float64,
           "val_grad_sq_norm": np.float64}
VALUE_COLUMNS = ("example", "value", "val_loss_change", "times_seen", "mean_dot", "first_step", "last_step")
CHUNK = re.compile(r"^rank(\d{3,})_steps(\d{8,})-(\d{8,})\.npz$")
VALUES_CSV = "values.csv"


def chunk_name(rank: int, first_step: int, last_step: int) -> str:
    return f"rank{rank:03d}_steps{first_step:08d}-{last_step:08d}.npz"


def chunks(directory: Path) -> list[tuple[Path, int, int, int]]:
    """(path, rank, first step, last step) of every chunk, in (first step, rank) order."""
    found = []
    if Path(directory).is_dir():
        for entry in os.scandir(directory):
            match = CHUNK.match(entry.name)
            if match:
                rank, first, last = map(int, match.groups())
                found.append((Path(entry.path), rank, first, last))
    return sorted(found, key=lambda c: (c[2], c[1]))


def write_chunk(directory: Path, rank: int, rows: dict[str, np.ndarray]) -> Path:
    """Write one chunk (all ``COLUMNS``, equal lengths, at least one row) atomically."""
    missing = set(COLUMNS) - set(rows)
    if missing:
        raise ValueError(f"a dot-product chunk needs the columns {sorted(missing)}")
    arrays = {name: np.asarray(rows[name], dtype=dtype) for name, dtype in COLUMNS.items()}
    if len({len(a) for a in arrays.values()}) != 1 or not len(arrays["step"]):
        raise ValueError("a dot-product chunk needs equal, non-zero lengths in every column")
    path = Path(directory) / chunk_name(rank, int(arrays["step"].min()), int(arrays["step"].max()))
    with atomic_file(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _load(path: Path) -> dict[str, np.ndarray]:
    """One chunk, or a one-line error naming it (a torn copy, a stray file under a chunk's name)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            return {name: archive[name] for name in COLUMNS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        reason = "not an .npz archive" if "pickled" in str(exc) else str(exc)
        raise UsageError(f"unreadable dot-product chunk {path}: {reason}") from None


def truncate_after(directory: Path, step: int) -> None:
    """Drop every row past ``step`` (a resume from that step's checkpoint): later chunks go, a
    chunk that straddles it is rewritten with its first rows, and the value table goes."""
    directory = Path(directory)
    for path, rank, first, last in chunks(directory):
        if first > step:
            path.unlink(missing_ok=True)
        elif last > step:
            rows = _load(path)
            keep = rows["step"] <= step
            write_chunk(directory, rank, {name: column[keep] for name, column in rows.items()})
            path.unlink(missing_ok=True)
    (directory / VALUES_CSV).unlink(missing_ok=True)


def read_dots(directory: Path) -> dict[str, np.ndarray]:
    """Every row of every chunk, sorted by (step, sample); a (step, sample) logged twice raises."""
    found = chunks(directory)
    if not found:
        raise UsageError(f"no dot-product chunks under {directory} (is it a method='graddotprod' run?)")
    parts = [_load(path) for path, *_ in found]
    rows = {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS}
    order = np.lexsort((rows["sample"], rows["step"]))
    rows = {name: column[order] for name, column in rows.items()}
    twice = (np.diff(rows["step"]) == 0) & (np.diff(rows["sample"]) == 0)
    if twice.any():
        i = int(np.flatnonzero(twice)[0])
        raise UsageError(f"{directory}: step {rows['step'][i]} sample {rows['sample'][i]} is logged twice")
    return rows


def sample_values(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The value table: per example, the cumulative first-order value ``sum lr * dot`` over the
    steps that used it (and ``val_loss_change``, its negative), how many times it was seen, its
    mean dot product and the first and last step; sorted by value, lowest (most harmful) first."""
    examples, inverse, times = np.unique(rows["example"], return_inverse=True, return_counts=True)
    value = np.bincount(inverse, weights=rows["lr"] * rows["dot"], minlength=len(examples))
    dot_sum = np.bincount(inverse, weights=rows["dot"], minlength=len(examples))
    first = np.full(len(examples), np.iinfo(np.int64).max)
    last = np.zeros(len(examples), dtype=np.int64)
    np.minimum.at(first, inverse, rows["step"])
    np.maximum.at(last, inverse, rows["step"])
    order = np.argsort(value, kind="stable")
    table = {"example": examples, "value": value, "val_loss_change": -value, "times_seen": times,
             "mean_dot": dot_sum / times,
             "first_step": first, "last_step": last}
    return {name: table[name][order] for name in VALUE_COLUMNS}


def write_values(directory: Path, table: dict[str, np.ndarray]) -> Path:
    path = Path(directory) / VALUES_CSV
    with atomic_file(path, "w", durable=False) as handle:
        writer = csv.writer(handle)
        writer.writerow(VALUE_COLUMNS)
        for row in zip(*(table[name] for name in VALUE_COLUMNS)):
            writer.writerow([repr(float(x)) if isinstance(x, np.floating) else int(x) for x in row])
    return path


def read_values(directory: Path) -> dict[str, np.ndarray]:
    """``values.csv`` as arrays (written by ``write_values``)."""
    path = Path(directory) / VALUES_CSV
    try:
        data = np.genfromtxt(path, delimiter=",", names=True, dtype=None, ndmin=1)
    except OSError as exc:
        raise UsageError(f"no value table at {path}: {exc}") from None
    return {name: np.asarray(data[name]) for name in VALUE_COLUMNS}
