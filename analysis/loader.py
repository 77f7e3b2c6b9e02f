"""Run directories in, one tidy table out.

``load_folder(path)`` or ``load_runs(run_paths)`` reads each run's ``<label>.csv``,
``config_<label>.json`` and ``<label>/status.json`` (names from ``orchestrator.paths``)
into a ``Study``:

- ``runs``: one row per usable run: N (total and non-embedding parameters), D (tokens
  processed at the last logged step), C = 6 N D, the final loss and where it came from,
  the last logged step (``steps``) and the planned ones (``optimizer_steps``), and the spec
  fields that vary in a study or that the checks read (``warmup_steps``).
- ``curves``: one row per logged step of those runs (the whole training curves).
- ``excluded``: runs that are incomplete or diverged, with the reason; they are left out
  of ``runs`` unless ``include_incomplete`` / ``include_diverged`` ask for them.
- ``problems``: files that could not be used (unreadable, missing columns, truncated),
  by path. They are reported, never crashed on and never silently used.

Final loss: the validation loss of the last logged step when it has one (the trainer
evaluates at the end); otherwise the mean training loss of the last 10% of logged steps
(at least 1, at most 20 rows), because a single training-loss value carries the noise
of one batch. ``loss_source`` says which ("val" or "train_smoothed").

Completeness: a run is complete when status.json says "completed". Without a
status.json (results copied without run directories), a run is complete when its CSV
reaches the spec's ``derived.optimizer_steps``. "diverged" in the status, or a
non-finite training loss in the CSV, marks a run as diverged.

CSVs are read with only the needed columns, in a thread pool (the C parser releases
the GIL), so thousands of runs load in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.paths import RunPaths, read_status

REQUIRED = ("optimizer_step", "tokens_processed", "loss")
OPTIONAL = ("val_loss",)
SMOOTH_FRACTION, SMOOTH_MAX_ROWS = 0.1, 20
# spec fields copied into the runs table when present (the ones studies vary, and the warmup
# that analysis.checks compares with the planned steps)
SPEC_FIELDS = ("workload", "hidden_dim", "num_layers", "learning_rate", "seed", "dataset", "vocab_size",
               "train_tokens", "tokens_per_param", "warmup_steps")


@dataclasses.dataclass
class Study:
    runs: pd.DataFrame
    curves: pd.DataFrame
    excluded: pd.DataFrame  # run, state, reason
    problems: pd.DataFrame  # path, problem


class _Problem(Exception):
    """A file of this run cannot be used; the message says why."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


def discover(folder: Path) -> list[RunPaths]:
    """Every run in a results folder: labels of ``<label>.csv`` and ``config_<label>.json``."""
    folder = Path(folder)
    labels = {p.stem for p in folder.glob("*.csv")}
    labels |= {p.stem[len("config_"):] for p in folder.glob("config_*.json")}
    return [RunPaths.of(folder.name, label, folder.parent) for label in sorted(labels)]


def load_folder(folder, **options) -> Study:
    """Load every run of one results folder (``<results>/<folder_name>``)."""
    return load_runs(discover(Path(folder)), **options)


def load_runs(paths, *, include_incomplete=False, include_diverged=False, workers=None,
              spec_fields=SPEC_FIELDS) -> Study:
    """Load the given runs (``RunPaths``); see the module docstring for the rules.

    ``spec_fields``: the spec fields copied into ``runs`` (None: all of them).
    """
    paths = list(paths)
    workers = workers or min(8, os.cpu_count() or 1)

    def load(p):
        return _load_one(p, include_incomplete, include_diverged, spec_fields)

    if len(paths) > 16 and workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(load, paths))
    else:
        results = [load(p) for p in paths]

    rows, curves, excluded, problems = [], [], [], []
    for kind, payload in results:
        if kind == "run":
            rows.append(payload[0])
            curves.append(payload[1])
        elif kind == "excluded":
            excluded.append(payload)
        else:
            problems.append(payload)
    runs = pd.DataFrame(rows, columns=_RUN_COLUMNS if not rows else None)
    if len(runs):
        runs = runs.sort_values(["N", "D", "run"], kind="stable").reset_index(drop=True)
    curves = pd.DataFrame({
        "run": np.repeat(np.array([row["run"] for row in rows], dtype=object),
                         [c["loss"].size for c in curves]),
        **{k: np.concatenate([c[k] for c in curves]) if curves else np.empty(0)
           for k in ("optimizer_step", "tokens", "flops", "loss", "val_loss")}})
    return Study(runs=runs, curves=curves,
                 excluded=pd.DataFrame(excluded, columns=["run", "state", "reason"]),
                 problems=pd.DataFrame(problems, columns=["path", "problem"]))


_RUN_COLUMNS = ["run", "folder", "label", "state", "N", "N_non_embedding", "D", "C", "loss",
                "loss_source", "final_val_loss", "final_train_loss", "steps", "optimizer_steps",
                "tokens_per_param", "identity"]


def _load_one(paths: RunPaths, include_incomplete: bool, include_diverged: bool, spec_fields=SPEC_FIELDS):
    """("run", (row, curve)) | ("excluded", (run, state, reason)) | ("problem", (path, why))."""
    name = f"{paths.folder.name}/{paths.label}"
    if not paths.config_json.exists() and not paths.metrics_csv.exists():
        state = (read_status(paths) or {}).get("state") or "not started"
        return "excluded", (name, state, "no config or metrics yet")
    try:
        config = _read_config(paths)
        status = read_status(paths)
        state = (status or {}).get("state")
        step_note = f" at step {status.get('optimizer_step')}" if status and "optimizer_step" in status else ""
        if state not in (None, "completed", "diverged") and not include_incomplete:
            return "excluded", (name, state, f"{state}{step_note}")  # running, failed, ...
        if state == "diverged" and not include_diverged:
            return "excluded", (name, state, f"diverged{step_note}")
        if not paths.metrics_csv.exists():
            if state == "completed":
                raise _Problem(paths.metrics_csv, "missing, although status.json says completed")
            return "excluded", (name, state or "not started", "no metrics CSV yet")
        curve = _read_curve(paths.metrics_csv)
        if curve["loss"].size == 0:
            if state == "completed":
                raise _Problem(paths.metrics_csv, "no rows, although status.json says completed")
            return "excluded", (name, state or "not started", "no steps logged yet")

        planned = int(config["derived"]["optimizer_steps"])
        last_step = int(curve["optimizer_step"][-1])
        if state == "completed" and last_step < planned:
            raise _Problem(paths.metrics_csv, f"ends at step {last_step} of {planned} although the "
                                              "run completed (truncated?)")
        if state is None:
            state = "completed" if last_step >= planned else "incomplete"
            if state == "incomplete" and not include_incomplete:
                return "excluded", (name, state, f"no status.json; CSV ends at step {last_step} of {planned}")
        if not np.isfinite(curve["loss"]).all() and state != "diverged":
            state = "diverged"
            if not include_diverged:
                return "excluded", (name, state, "non-finite training loss in the CSV")
    except _Problem as problem:
        return "problem", (str(problem.path), str(problem))
    return "run", _tidy(name, paths, config, state, curve, spec_fields)


def _read_config(paths: RunPaths) -> dict:
    try:
        config = json.loads(paths.config_json.read_text())
        derived = config["derived"]
        if derived.get("total_params", 0) is None:  # a command run whose spec gives no N
            raise _Problem(paths.config_json, "no parameter count N: the command's spec gives no params "
                                              "(command_experim(..., params=N) makes the run fittable)")
        for key in ("total_params", "non_embedding_params", "optimizer_steps"):
            float(derived[key])
        return config
    except FileNotFoundError:
        raise _Problem(paths.config_json, "missing (a CSV without its config)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Problem(paths.config_json, f"unreadable JSON: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _Problem(paths.config_json, f"no usable 'derived' numbers ({exc!r})") from None


def _read_curve(path: Path) -> dict[str, np.ndarray]:
    """The needed columns of a metrics CSV as arrays, checked; raises _Problem when unusable."""
    try:
        with open(path, "rb") as handle:
            header = handle.readline().decode("utf-8").strip().split(",")
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                raise _Problem(path, "empty file (not even a header)")
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                raise _Problem(path, "truncated: the last line is incomplete")
    except (UnicodeDecodeError, OSError) as exc:
        raise _Problem(path, f"unreadable CSV: {exc}") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise _Problem(path, f"missing columns {', '.join(missing)} (has: {', '.join(map(str, header))})")
    columns = [c for c in REQUIRED + OPTIONAL if c in header]
    try:
        curve = pd.read_csv(path, usecols=columns, dtype={c: "float64" for c in columns},
                            engine="c")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise _Problem(path, f"malformed CSV: {str(exc).strip()}") from None
    curve = {c: curve[c].to_numpy() for c in columns}
    if "val_loss" not in curve:
        curve["val_loss"] = np.full(curve["loss"].size, np.nan)
    if curve["loss"].size == 0:
        return curve
    counters = np.isnan(curve["optimizer_step"]) | np.isnan(curve["tokens_processed"])
    if counters.any():
        raise _Problem(path, f"row {int(counters.argmax()) + 1} has no optimizer_step or tokens_processed "
                             "(truncated?)")
    if (np.diff(curve["optimizer_step"]) <= 0).any():
        raise _Problem(path, "optimizer_step does not increase (two runs written to one file?)")
    return curve


def _tidy(name, paths, config, state, curve, spec_fields=SPEC_FIELDS):
    derived, spec = config["derived"], config.get("spec", {})
    N = float(derived["total_params"])
    tokens, train = curve["tokens_processed"], curve["loss"]
    D = float(tokens[-1])
    finite = train[np.isfinite(train)]
    k = int(min(SMOOTH_MAX_ROWS, max(1, round(SMOOTH_FRACTION * finite.size))))
    train_smoothed = float(finite[-k:].mean()) if finite.size else float("nan")
    val = float(curve["val_loss"][-1])
    use_val = np.isfinite(val)
    row = {
        "run": name, "folder": paths.folder.name, "label": paths.label, "state": state,
        "N": N, "N_non_embedding": float(derived["non_embedding_params"]), "D": D,
        "C": 6.0 * N * D, "loss": val if use_val else train_smoothed,
        "loss_source": "val" if use_val else "train_smoothed",
        "final_val_loss": val, "final_train_loss": train_smoothed,
        "steps": int(curve["optimizer_step"][-1]), "optimizer_steps": int(derived["optimizer_steps"]),
        "tokens_per_param": D / N,
        "identity": config.get("identity"),
    }
    row.update({f: v for f, v in spec.items() if spec_fields is None or f in spec_fields})
    return row, {"optimizer_step": curve["optimizer_step"].astype(np.int64), "tokens": tokens,
                 "flops": 6.0 * N * tokens, "loss": train, "val_loss": curve["val_loss"]}
