"""The mission's loop on one command: submit, watch, analyse; reruns reuse; Ctrl-C is clean."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REGISTRIES = textwrap.dedent("""
    from experiments import gen_experim

    TINY = dict(partition="local", seq_length=32, target_effective_batch_size=8, eval_batches=4, learning_rate=1e-2)
    MINI_STUDY = [s for w in (16, 24, 32) for t in (4096, 8192, 16384, 32768)
                  for s in gen_experim(w, label=f"mini_{w}d_{t}", folder_name="mini", train_tokens=t, **TINY)]
    LONG_STUDY = [s for w in (16, 32)
                  for s in gen_experim(w, label=f"long_{w}d", folder_name="long", train_tokens=1_000_000,
                                       checkpoint_interval_steps=200, **TINY)]
""")


@pytest.fixture
def study_module(tmp_path):
    path = tmp_path / "study_registries.py"
    path.write_text(REGISTRIES)
    return path


def orchestrate(module, *args, timeout_s=600):
    return subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(module), *args],
                          capture_output=True, text=True, timeout=timeout_s)


def results():
    return Path(os.environ["ORCHESTRATOR_RESULTS_DIR"])


def test_study_runs_fits_and_a_rerun_only_refits(study_module):
    first = orchestrate(study_module, "study", "MINI_STUDY", "--bootstrap", "20", "--budget", "1e12")
    assert first.returncode == 0, first.stderr
    assert "submitted 12 experiments" in first.stdout
    progress = [line for line in first.stdout.splitlines() if line.startswith("MINI_STUDY: ") and "runs done" in line]
    assert progress[0].startswith("MINI_STUDY: 0/12 runs done") and progress[-1].startswith("MINI_STUDY: 12/12 runs done")
    watched = first.stdout.split("L(N, D)")[0]
    assert all(" tokens/s, ETA " in line for line in progress) and "━" not in watched  # no live view in a pipe
    assert sum(line.startswith("mini_") and " completed " in line for line in first.stdout.splitlines()) == 12
    assert "L(N, D) = E + A / N^alpha + B / D^beta" in first.stdout
    assert "Compute-optimal allocation" in first.stdout and "1.00e+12" in first.stdout
    report = results() / "analysis" / "MINI_STUDY" / "report.json"
    assert json.loads(report.read_text())["data"]["runs_used"] == 12
    assert (results() / "analysis" / "MINI_STUDY" / "loss_vs_flops.png").stat().st_size > 10_000
    trained = {p: p.stat().st_mtime_ns for p in (results() / "mini").glob("*.csv")}
    assert len(trained) == 12

    again = orchestrate(study_module, "study", "MINI_STUDY", "--bootstrap", "20")
    assert again.returncode == 0, again.stderr
    assert "submitted 0 experiments" in again.stdout and "12 completed" in again.stdout
    assert "L(N, D)" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (results() / "mini").glob("*.csv")} == trained


def statuses(module, registry):
    out = orchestrate(module, "status", registry, "--json").stdout
    return {row["label"]: row for row in json.loads(out)[registry]}


def stop_and_continue(module, sig, preexec_fn=None):
    """Start LONG_STUDY, send ``sig`` once both runs have a checkpoint, then check the clean stop
    (runs checkpoint and are cancelled) and that the next study continues from the checkpoints."""
    study = subprocess.Popen([sys.executable, "-m", "orchestrator", "--registry-module", str(module), "study",
                              "LONG_STUDY", "--bootstrap", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=preexec_fn)
    try:
        deadline = time.monotonic() + 120
        while not all((r["optimizer_step"] or 0) > 250 for r in statuses(module, "LONG_STUDY").values()):
            assert time.monotonic() < deadline and study.poll() is None, "the runs never got going"
            time.sleep(1)
        study.send_signal(sig)
        out, err = study.communicate(timeout=120)
    finally:
        if study.poll() is None:
            study.kill()
            study.communicate()
        if study.returncode != 130:  # it did not stop its runs: leave no trainers on shared cores
            orchestrate(module, "cancel", "LONG_STUDY", "-y")
    assert study.returncode == 130, err
    assert "Run the same command again to continue" in out

    deadline = time.monotonic() + 60
    while {r["state"] for r in statuses(module, "LONG_STUDY").values()} != {"cancelled"}:
        assert time.monotonic() < deadline, statuses(module, "LONG_STUDY")
        time.sleep(1)
    stopped_at = {}
    for label in ("long_16d", "long_32d"):
        status = json.loads((results() / "long" / label / "status.json").read_text())
        assert status["state"] == "cancelled" and status["checkpoint"]
        stopped_at[label] = status["optimizer_step"]
        with open(results() / "long" / f"{label}.csv") as handle:
            rows = list(csv.reader(handle))
        assert all(len(row) == len(rows[0]) for row in rows)  # no torn row
    assert not list(results().rglob("*.tmp"))  # no half-written file

    rerun = orchestrate(module, "study", "LONG_STUDY", "--bootstrap", "0")
    assert rerun.returncode == 0, rerun.stderr
    assert "submitted 2 experiments" in rerun.stdout
    for label, step in stopped_at.items():
        status = json.loads((results() / "long" / label / "status.json").read_text())
        assert status["state"] == "completed"
        log = (results() / "long" / label / "logs" / "train.log").read_text()
        resumed = [int(n) for n in re.findall(r"resumed at step (\d+)", log)]
        assert len(resumed) == 1 and 0 < resumed[0] <= step  # continued from its checkpoint
        with open(results() / "long" / f"{label}.csv") as handle:
            steps = [int(row["optimizer_step"]) for row in csv.DictReader(handle)]
        assert steps == sorted(set(steps)) and steps[-1] == 3907


def test_ctrl_c_stops_cleanly_and_a_rerun_continues(study_module):
    stop_and_continue(study_module, signal.SIGINT)


def test_sigint_stops_a_study_started_in_the_background(study_module):
    # `study &`, nohup and batch scripts start it with SIGINT ignored; Python then has no Ctrl-C
    stop_and_continue(study_module, signal.SIGINT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def test_sigterm_stops_a_study_cleanly(study_module):
    stop_and_continue(study_module, signal.SIGTERM)
