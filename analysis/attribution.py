"""A GradDotProd run's training samples ranked by their in-run data value (``attribution``).

The log and the value table are ``workloads.dotlog``'s; this module finds the runs that have
one, reads it back, puts text to the example ids (an example is a training window of the
run's ``dataset``, so its text comes from the same data the run read), draws the pictures and
exports a curated dataset:

- ``find_runs``: a run directory, every run under a results folder, or a registry's
  ``method="graddotprod"`` experiments, keeping those that logged at least one chunk;
- ``report``: the counts, the first and last validation loss, the top and bottom examples
  with their text, ``values.csv`` refreshed, the plots (PNG, matplotlib's Agg backend):
  ``value_hist.png`` (the example values; a symmetric-log axis when they span orders of
  magnitude), ``value_vs_times_seen.png`` and ``steps.png`` (per-step mean dot product and
  validation loss);
- ``export``: the examples outside the lowest-valued fraction as ``DIR/kept.jsonl``, one
  ``{"text": ...}`` record each in example-id order, so a curation rerun can train on
  ``dataset=DIR``. The dropped ones go *next to* DIR, in ``<DIR>.dropped.jsonl``: the dataset
  reader reads every .txt/.jsonl under DIR, so nothing else may live there.

An exported record is the example's whole window (``seq_length + 1`` tokens) decoded: windows
overlap by one token, and the reader ends each jsonl record with a newline, so a rerun's
corpus is close to, not byte-for-byte, the kept windows. Examples never seen by the run are in no table and are not exported.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from orchestrator.errors import UsageError, note_once
from orchestrator.paths import RunPaths, atomic_file
from workloads import dotlog

SNIPPET_CHARS = 70
SPAN_DECADES = 2  # |values| spanning more than this many decades get a symmetric-log axis
EXPORT_BATCH = 4096  # examples decoded at a time: a window of a long sequence is many tokens
KEPT_JSONL = "kept.jsonl"
PLOTS = ("value_hist.png", "value_vs_times_seen.png", "steps.png")


@dataclasses.dataclass(frozen=True)
class AttributedRun:
    paths: RunPaths
    spec: object  # the ExperimentSpec the run trained (its data gives the examples' text)

    @property
    def name(self) -> str:
        return f"{self.paths.folder.name}/{self.paths.label}"


# ------------------------------------------------------------------------- finding runs
def _has_dots(paths: RunPaths) -> bool:
    return bool(dotlog.chunks(paths.grad_dotprods_dir))


def find_runs(target: str, extra_modules=()) -> tuple[list[AttributedRun], str]:
    """(runs with dot products, description of the target); none is a UsageError naming it.

    A directory is a run directory when it has ``grad_dotprods/``, else a results folder
    (``<results>/<folder>``) or the results root, searched two levels down: never into
    checkpoints or logs, which can hold many files.
    """
    from orchestrator.spec import load_spec

    folder = Path(target)
    if folder.is_dir():
        if (folder / "grad_dotprods").is_dir():
            dirs = [folder]
        else:
            dirs = sorted({p.parent for pattern in ("*/grad_dotprods", "*/*/grad_dotprods")
                           for p in folder.glob(pattern) if p.is_dir()})
        found = [RunPaths(d.parent, d.name) for d in dirs]
        found = [p for p in found if _has_dots(p)]
        if not found:
            raise UsageError(f"no run with dot products in {target}: no <label>/grad_dotprods/ holding "
                             f"chunks (runs with method='graddotprod' write them as they train)")
        return [AttributedRun(p, load_spec(p.spec_json)) for p in found], str(folder)
    if folder.is_file():
        raise UsageError(f"{target} is a file; attribution reads a run directory, a results folder or a registry")
    if "/" in target or target.startswith("."):
        raise UsageError(f"no such run directory or results folder {target!r} (and a registry name has no '/')")
    from orchestrator.registry import load_registry

    specs = load_registry(target, extra_modules)  # raises UsageError for an unknown name
    wanted = [s for s in specs if getattr(s, "method", "regular") == "graddotprod"]
    runs = [AttributedRun(RunPaths.of(s.folder_name, s.label), s) for s in wanted]
    runs = [run for run in runs if _has_dots(run.paths)]
    if not runs:
        raise UsageError(f"no run with dot products in registry {target}: {len(wanted)} of its {len(specs)} "
                         f"experiments have method='graddotprod', and none has logged a chunk yet")
    return runs, f"registry {target}"


def plot_dir(run: AttributedRun, out: str | None, several: bool) -> Path:
    """``--out`` for one run, ``--out/<folder>/<label>`` for several (no two runs' plots
    overwrite each other), else the run's own ``grad_dotprods/plots``."""
    if out is None:
        return run.paths.grad_dotprods_dir / "plots"
    return Path(out) / run.paths.folder.name / run.paths.label if several else Path(out)


# ------------------------------------------------------------------------- text
def snippet(text: str, width: int = SNIPPET_CHARS) -> str:
    """One line of at most ``width`` characters: newlines as ⏎, tabs as spaces, other
    unprintable characters as �, so a table row stays one row."""
    shown = "".join("⏎" if ch == "\n" else " " if ch == "\t" else ch if ch.isprintable() else "\ufffd"
                    for ch in text)
    return shown if len(shown) <= width else shown[:width - 1] + "…"


class Texts:
    """The examples' text from the run's own data (tokenised once, then memory-mapped)."""

    def __init__(self, spec):
        from workloads.data import TokenData, get_tokenizer

        self.spec = spec
        self.data = TokenData.for_spec(spec)
        self.tokenizer = get_tokenizer(spec)

    def __call__(self, example_ids) -> list[str]:
        ids = np.asarray(example_ids, dtype=np.int64)
        try:
            windows = self.data.examples(ids)
        except IndexError:
            raise UsageError(f"example ids up to {ids.max()} are not training windows of dataset "
                             f"{self.spec.dataset!r} at seq_length={self.spec.seq_length}: has the data "
                             f"changed since the run?") from None
        return [self.tokenizer.decode(window) for window in windows]


def _texts_or_none(run: AttributedRun):
    """The run's texts, or None with a note: results synced home may name a dataset directory
    that only the cluster has, and the values are worth reading without the text."""
    try:
        return Texts(run.spec)
    except UsageError as exc:
        note_once(f"{run.name}: no example text ({exc})")
        return None


# ------------------------------------------------------------------------- the report
def refresh_values(directory: Path, table: dict) -> Path:
    """``values.csv``, rewritten when it is missing or older than the newest chunk (a run that
    is still training, or one resumed since). A read-only results folder (a lab-mate's) gets
    a note, not an error: the table was computed here anyway."""
    path = Path(directory) / dotlog.VALUES_CSV
    newest = max(p.stat().st_mtime_ns for p, *_ in dotlog.chunks(directory))
    # strictly newer: a chunk written in the same clock tick as the table may postdate it
    if path.exists() and path.stat().st_mtime_ns > newest:
        return path
    try:
        return dotlog.write_values(directory, table)
    except OSError as exc:
        note_once(f"could not write {path}: {exc}")
        return path


def per_step(rows: dict) -> dict[str, np.ndarray]:
    """Each logged step's mean dot product, validation loss and rate."""
    steps, inverse, counts = np.unique(rows["step"], return_inverse=True, return_counts=True)
    mean = {name: np.bincount(inverse, weights=rows[name]) / counts for name in ("dot", "val_loss", "lr")}
    return {"step": steps, "mean_dot": mean["dot"], "val_loss": mean["val_loss"], "lr": mean["lr"]}


def _entries(table: dict, positions, ranks, texts) -> list[dict]:
    ids = table["example"][positions]
    decoded = texts(ids) if texts is not None and len(ids) else [None] * len(ids)
    return [{"rank": int(rank), "example": int(table["example"][i]), "value": float(table["value"][i]),
             "times_seen": int(table["times_seen"][i]), "mean_dot": float(table["mean_dot"][i]),
             "first_step": int(table["first_step"][i]), "last_step": int(table["last_step"][i]), "text": text}
            for i, rank, text in zip(positions, ranks, decoded)]


def report(run: AttributedRun, top: int = 10, out_dir: Path | None = None, drop_lowest: float | None = None,
           export_dir: Path | None = None) -> dict:
    """One run's report as plain JSON-able data; writes values.csv, the plots and the export."""
    directory = run.paths.grad_dotprods_dir
    rows = dotlog.read_dots(directory)
    table = dotlog.sample_values(rows)
    values_csv = refresh_values(directory, table)
    steps = per_step(rows)
    n = len(table["example"])
    k = min(top, n)
    texts = Texts(run.spec) if export_dir is not None else _texts_or_none(run)
    highest = np.arange(n - 1, n - 1 - k, -1)  # the table is sorted lowest value first
    result = {
        "run": run.name, "run_dir": str(run.paths.run_dir),
        "steps_logged": len(steps["step"]), "first_step": int(steps["step"][0]), "last_step": int(steps["step"][-1]),
        "samples": len(rows["step"]), "examples": n,
        "val_loss_first": float(steps["val_loss"][0]), "val_loss_last": float(steps["val_loss"][-1]),
        "values_csv": str(values_csv),
        "top": _entries(table, highest, n - highest, texts),
        "bottom": _entries(table, np.arange(k), n - np.arange(k), texts),
    }
    result["plots"] = [str(p) for p in draw(run.name, table, steps, out_dir or directory / "plots")]
    if export_dir is not None:
        result["export"] = export(table, drop_lowest, export_dir, texts)
    return result


# ------------------------------------------------------------------------- export
def dropped_path(export_dir: Path) -> Path:
    export_dir = Path(export_dir).expanduser().resolve()
    return export_dir.parent / f"{export_dir.name}.dropped.jsonl"


def check_export_dir(export_dir: Path) -> None:
    """DIR becomes a dataset, and the reader takes every text file under it: refuse one that
    holds anything but an earlier export's kept.jsonl."""
    export_dir = Path(export_dir).expanduser()
    if export_dir.exists() and not export_dir.is_dir():
        raise UsageError(f"--export {export_dir} is a file; give a directory (it becomes a dataset)")
    others = sorted(p.name for p in export_dir.iterdir() if p.name != KEPT_JSONL) if export_dir.is_dir() else []
    if others:
        raise UsageError(f"--export {export_dir} already holds {', '.join(others[:3])}"
                         f"{' ...' if len(others) > 3 else ''}; a dataset directory is read whole, "
                         f"so give an empty or new one")


def _write_jsonl(path: Path, ids: np.ndarray, texts) -> None:
    with atomic_file(path, "w") as handle:
        for start in range(0, len(ids), EXPORT_BATCH):
            for text in texts(ids[start:start + EXPORT_BATCH]):
                # ASCII escapes: the file is right whatever this machine's locale encoding is
                handle.write(json.dumps({"text": text}) + "\n")


def export(table: dict, fraction: float, export_dir: Path, texts) -> dict:
    """Drop the ``round(fraction * examples)`` lowest-valued examples (ties at the cut by
    example id, as the table sorts them); write the rest to ``DIR/kept.jsonl`` and the dropped
    ones to ``<DIR>.dropped.jsonl``, each in example-id order."""
    n = len(table["example"])
    drop = int(round(fraction * n))
    if drop >= n:
        raise UsageError(f"--drop-lowest {fraction:g} of {n} examples drops them all; give a smaller fraction")
    export_dir = Path(export_dir).expanduser()
    export_dir.mkdir(parents=True, exist_ok=True)
    kept, dropped = np.sort(table["example"][drop:]), np.sort(table["example"][:drop])
    kept_path, dropped_file = export_dir / KEPT_JSONL, dropped_path(export_dir)
    _write_jsonl(kept_path, kept, texts)
    _write_jsonl(dropped_file, dropped, texts)
    return {"fraction": fraction, "kept": len(kept), "dropped": len(dropped),
            "highest_dropped_value": float(table["value"][drop - 1]) if drop else None,
            "kept_jsonl": str(kept_path), "dropped_jsonl": str(dropped_file), "dataset": str(export_dir)}


# ------------------------------------------------------------------------- plots
def linthresh(values: np.ndarray) -> float | None:
    """A symmetric-log threshold (the 10th percentile of the non-zero |values|) when they span
    more than SPAN_DECADES decades; None for a plain axis."""
    magnitude = np.abs(values[np.isfinite(values) & (values != 0)])
    if len(magnitude) < 2:
        return None
    low, high = np.percentile(magnitude, 10), magnitude.max()
    return float(low) if high / low > 10 ** SPAN_DECADES else None


def _symlog_bins(values: np.ndarray, threshold: float, n: int = 60) -> np.ndarray:
    """Bin edges even on a symmetric-log axis: even in sign(x) log10(1 + |x| / threshold)."""
    t = np.sign(values) * np.log10(1 + np.abs(values) / threshold)
    edges = np.linspace(t.min(), t.max(), n + 1)
    return np.sign(edges) * threshold * (10 ** np.abs(edges) - 1)


def draw(name: str, table: dict, steps: dict, out_dir: Path) -> list[Path]:
    # imported here: finding runs and reading logs need no matplotlib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = table["value"]
    threshold = linthresh(values)
    value_label = "example value (validation-loss reduction, first order)"
    figures = {}

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.hist(values, bins=_symlog_bins(values, threshold) if threshold else 60, color="tab:blue")
    if threshold:
        ax.set_xscale("symlog", linthresh=threshold)
    ax.axvline(0, color="gray", lw=0.8)
    ax.set(xlabel=value_label, ylabel="examples", title=f"{name}: {len(values)} examples")
    figures["value_hist.png"] = fig

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(table["times_seen"], values, s=6, alpha=0.5)
    if threshold:
        ax.set_yscale("symlog", linthresh=threshold)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel="times seen (samples of the example)", ylabel=value_label, title=f"{name}: value vs times seen")
    figures["value_vs_times_seen.png"] = fig

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(steps["step"], steps["mean_dot"], lw=1)
    top.axhline(0, color="gray", lw=0.8)
    top.set(ylabel="mean <grad l_i, grad L_val>", title=f"{name}: per logged step")
    bottom.plot(steps["step"], steps["val_loss"], lw=1, color="tab:orange")
    bottom.set(xlabel="optimizer step", ylabel="validation loss (attribution rows)")
    figures["steps.png"] = fig

    written = []
    for file_name in PLOTS:
        figures[file_name].savefig(out_dir / file_name, dpi=120, bbox_inches="tight")
        plt.close(figures[file_name])
        written.append(out_dir / file_name)
    return written
