"""Multi-GPU runs under the local Slurm (slurm_templates/local_cluster.sh). An LSTM experiment
submitted through ``python -m orchestrator`` with its default 2 GPUs runs as one job of 2 tasks,
one gloo rank each; with the profile's ``launcher: torchrun``, a transformer on 2 GPUs runs as one
task whose torchrun starts the 2 ranks, and a preemption reaches them and resumes them."""

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# gpus is left to the workload's default (2); miso asks for one task per GPU (--gpus-per-task)
REGISTRY = textwrap.dedent("""
    from workloads.lstm import gen_lstm_experim

    SLURM_LSTM = gen_lstm_experim(16, label="lstm_ddp", folder_name="lstm_slurm", partition="miso",
                                  seq_length=32, target_effective_batch_size=8, train_tokens=8 * 32 * 30,
                                  log_interval_steps=5, eval_batches=2, time_min=10, mem_gb=2, cpus_per_gpu=1)
""")


def orchestrate(study, *args):
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(study), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"orchestrator {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return json.loads(result.stdout)


def test_an_lstm_experiment_runs_as_one_job_with_two_tasks_and_completes(tmp_path, slurm_cluster):
    study = tmp_path / "lstm_study.py"
    study.write_text(REGISTRY)
    submitted = orchestrate(study, "submit", "SLURM_LSTM", "--json")
    assert submitted["counts"]["submit"] == 1 and submitted["backend"] == "slurm"

    deadline = time.monotonic() + 240
    while True:
        row = orchestrate(study, "status", "SLURM_LSTM", "--json")["SLURM_LSTM"][0]
        if row["state"] not in ("pending", "running", "not submitted", "requeued"):
            break
        assert time.monotonic() < deadline, f"still {row['state']} after 240 s: {row}"
        time.sleep(2)
    assert row["state"] == "completed", row

    accounting = subprocess.run(["sacct", "-j", row["job_id"], "-P", "-n", "-o", "JobID,NTasks"],
                                capture_output=True, text=True).stdout
    assert any(line.endswith("|2") for line in accounting.splitlines()), accounting

    results = Path(os.environ["ORCHESTRATOR_RESULTS_DIR"]) / "lstm_slurm"
    config = json.loads((results / "config_lstm_ddp.json").read_text())
    assert config["spec"]["workload"] == "lstm" and config["spec"]["gpus"] == 2
    assert config["plan"]["data_parallel"] == 2 and config["plan"]["batch_size"] == 4
    with open(results / "lstm_ddp.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = [int(r["optimizer_step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 30  # one writer, every row once
    for r in rows:  # the effective batch, 8 sequences of 32 tokens, covers both ranks' 4
        assert int(r["tokens_processed"]) == int(r["optimizer_step"]) * 8 * 32
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


TORCHRUN_REGISTRY = textwrap.dedent("""
    from experiments import gen_experim

    TORCHRUN = gen_experim(16, label="torchrun", folder_name="torchrun_slurm", partition="miso", gpus=2,
                           seq_length=32, target_effective_batch_size=8, train_tokens=8 * 32 * 600,
                           log_interval_steps=10, checkpoint_interval_steps=500, eval_batches=2, time_min=10,
                           mem_gb=2, cpus_per_gpu=1)
""")


def test_with_launcher_torchrun_one_task_starts_the_ranks_and_a_preemption_reaches_them(tmp_path, slurm_cluster):
    profiles = Path(os.environ["ORCHESTRATOR_CONFIG_DIR"]) / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "miso.yaml").write_text("launcher: torchrun\n")
    study = tmp_path / "torchrun_study.py"
    study.write_text(TORCHRUN_REGISTRY)
    submitted = orchestrate(study, "submit", "TORCHRUN", "--json")
    assert submitted["arrays"][0]["resources"]["tasks_per_node"] == 1

    def row():
        return orchestrate(study, "status", "TORCHRUN", "--json")["TORCHRUN"][0]

    deadline = time.monotonic() + 180
    while not (row()["state"] == "running" and (row()["optimizer_step"] or 0) >= 20):
        assert time.monotonic() < deadline, row()
        time.sleep(1)
    job = row()["job_id"]
    subprocess.run(["scancel", "--signal", "USR2", job], check=True)
    deadline = time.monotonic() + 300
    while (current := row())["state"] != "completed":
        assert current["state"] in ("running", "requeued", "pending", "interrupted"), current
        assert time.monotonic() < deadline, current
        time.sleep(2)

    accounting = subprocess.run(["sacct", "-j", job, "-P", "-n", "-o", "JobID,NTasks"],
                                capture_output=True, text=True).stdout
    assert any(line.endswith("|1") for line in accounting.splitlines()), accounting
    results = Path(os.environ["ORCHESTRATOR_RESULTS_DIR"]) / "torchrun_slurm"
    config = json.loads((results / "config_torchrun.json").read_text())
    assert config["plan"]["data_parallel"] == 2
    with open(results / "torchrun.csv", newline="") as handle:
        steps = [int(r["optimizer_step"]) for r in csv.DictReader(handle)]
    assert steps == sorted(set(steps)) and steps[-1] == 600
    logs = "".join(p.read_text(errors="replace")
                   for p in Path(os.environ["ORCHESTRATOR_RESULTS_DIR"]).rglob(f"{job}*_log.out"))
    assert "torchrun started 2 ranks" in logs and "resumed at step" in logs
