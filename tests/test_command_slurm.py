"""The command workload on the real local Slurm: a study of an existing trainer (the stand-in in
tests/fixtures, which writes lingua's metrics.jsonl) is submitted, one run is preempted with
SIGUSR2 mid-training, requeued and resumed by the command from its own checkpoint, every run
finishes, and ``analyze`` fits the runs and recovers the law the stand-in's losses follow.
"""

import json
import subprocess
import textwrap

import pytest

from test_command import LAW, STANDIN
from test_slurm_integration import csv_steps, orchestrate, results_dir, states, submitted_job, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REGISTRIES = textwrap.dedent(f"""
    from workloads.command import command_experim

    LAW = {LAW!r}
    RESOURCES = dict(partition="sphinx", time_min=10, mem_gb=2, cpus_per_gpu=1)


    def standin(n_params, tokens, steps=20, step_s=0.02, label=None):
        batch = tokens // (steps * 1_000_000)
        config = {{"dump_dir": "{{run_dir}}", "steps": "{{steps}}", "batch_size": batch, "seq_len": 1_000_000,
                   "log_freq": 5, "checkpoint_every": 10, "step_s": step_s, "n_params": n_params, "law": LAW}}
        return command_experim("{{python}} {STANDIN} config={{config_path}}", label=label or f"n{{n_params}}_d{{tokens}}",
                               folder_name="cmd", steps=steps, params=n_params, config=config, **RESOURCES)


    # 4 sizes x 3 budgets; the largest run is slow, to be preempted while it trains
    GRID = [spec for n in (10**8, 10**9, 10**10, 10**11) for d in (2 * 10**9, 2 * 10**10, 2 * 10**11)
            for spec in (standin(n, d) if (n, d) != (10**11, 2 * 10**11)
                         else standin(n, d, steps=400, step_s=0.05, label="slow"))]
    FAILS = command_experim("{{python}} -c 'import sys; print(\\"boom: no GPU here\\"); sys.exit(4)'", label="fails",
                            folder_name="cmd_fail", steps=10, **RESOURCES)
""")


@pytest.fixture
def study(tmp_path, slurm_cluster):
    path = tmp_path / "command_study.py"
    path.write_text(REGISTRIES)
    return path


def test_a_command_study_is_preempted_requeued_finished_and_analyzed(study):
    out = submitted_job(study, "GRID")
    assert out["counts"]["submit"] == 12 and out["backend"] == "slurm"
    assert out["arrays"][0]["resources"]["tasks_per_node"] == 1
    rows = wait_for(study, "GRID", lambda rows: rows["slow"]["state"] == "running"
                    and (rows["slow"]["optimizer_step"] or 0) >= 20, timeout_s=180, what="the slow run to train")
    job = rows["slow"]["job_id"]
    subprocess.run(["scancel", "--signal", "USR2", job], check=True)
    wait_for(study, "GRID", lambda rows: rows["slow"]["state"] in ("requeued", "pending", "interrupted"),
             timeout_s=60, what="the slow run to be requeued")
    rows = wait_for(study, "GRID", lambda rows: all(r["state"] not in ("running", "pending", "requeued", "interrupted")
                                                    for r in rows.values()), timeout_s=300, what="every run to end")
    assert {r["state"] for r in rows.values()} == {"completed"}, rows
    slow = results_dir() / "cmd" / "slow"
    log = (slow / "logs" / "command.log").read_text()
    assert log.count("\n=== ") + log.startswith("=== ") == 2 and "preempted by USR2" in log and "resuming from step" in log
    steps = csv_steps(results_dir() / "cmd" / "slow.csv")
    assert steps == sorted(set(steps)) and steps[-1] == 400

    report = json.loads(orchestrate(study, "analyze", "GRID", "--bootstrap", "0", "--json").stdout)
    assert len(report["data"]["runs"]) == 12
    fitted = {name: entry["value"] for name, entry in report["approach3"]["parameters"].items()}
    assert fitted["E"] == pytest.approx(LAW["E"], rel=0.02)
    assert fitted["alpha"] == pytest.approx(LAW["alpha"], abs=0.01)
    assert fitted["beta"] == pytest.approx(LAW["beta"], abs=0.01)


def test_a_failing_command_is_failed_with_its_last_lines_on_slurm(study):
    submitted_job(study, "FAILS")
    rows = wait_for(study, "FAILS", lambda rows: rows["fails"]["state"] not in ("pending", "running"),
                    timeout_s=120, what="the command to fail")
    assert rows["fails"]["state"] == "failed", rows
    status = json.loads((results_dir() / "cmd_fail" / "fails" / "status.json").read_text())
    assert "wrote no metrics" in status["error"] and "exit status 4" in status["error"]
    assert "boom: no GPU here" in status["error"]
    shown = orchestrate(study, "status", "FAILS").stdout
    assert "exit status 4" in shown
    assert states(study, "FAILS")["fails"]["state"] == "failed"
