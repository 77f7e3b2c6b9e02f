"""The submission engine against a real slurmctld on this machine (slurm_templates/local_cluster.sh).

Every test submits tiny real training runs through ``python -m orchestrator``, exactly as a
user would, and reads the outcome back through ``status --json`` and the run directories.
"""

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

REGISTRIES = textwrap.dedent("""
    from experiments import gen_experim

    TINY = dict(seq_length=32, target_effective_batch_size=8, time_min=10, mem_gb=2, cpus_per_gpu=1,
                eval_batches=2)

    SLURM20 = [s for i in range(20)
               for s in gen_experim(16, label=f"tiny_{i:02d}", folder_name="twenty", train_tokens=1024 * (i + 1),
                                    seed=i, **TINY)]
    # 6,250 steps: long enough (~20-60 s) to be caught running
    SLURM_LONG = [s for i in range(2)
                  for s in gen_experim(32, label=f"long_{i}", folder_name="long", train_tokens=1_600_000, seed=i,
                                       checkpoint_interval_steps=500, log_interval_steps=10, **TINY)]
    SLURM_RAISES = gen_experim(16, label="no_data", folder_name="bad", dataset="/nonexistent/corpus", **TINY)
    SLURM_DDP = gen_experim(16, label="ddp", folder_name="ddp", gpus=2, train_tokens=8192, **TINY)
    SLURM_MISO = gen_experim(16, label="on_miso", folder_name="miso", partition="miso", train_tokens=2048, **TINY)
""")


@pytest.fixture
def study(tmp_path, slurm_cluster):
    path = tmp_path / "slurm_study.py"
    path.write_text(REGISTRIES)
    return path


def orchestrate(study, *args, check=True):
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(study), *args],
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode:
        raise AssertionError(f"orchestrator {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def states(study, registry):
    data = json.loads(orchestrate(study, "status", registry, "--json").stdout)
    return {row["label"]: row for row in data[registry]}


def wait_for(study, registry, predicate, timeout_s=240, what="the expected states"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = states(study, registry)
        if predicate(rows):
            return rows
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(rows, indent=1)[:3000]}")


def all_in(*wanted):
    return lambda rows: all(r["state"] in wanted for r in rows.values())


def submitted_job(study, registry, *args):
    out = json.loads(orchestrate(study, "submit", registry, "--json", *args).stdout)
    return out


def results_dir():
    return Path(os.environ["ORCHESTRATOR_RESULTS_DIR"])


def queued_job_ids():
    return set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())


def _comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


def csv_steps(path):
    with open(path) as handle:
        return [int(row["optimizer_step"]) for row in csv.DictReader(handle)]


def test_twenty_runs_complete_and_a_second_submit_submits_nothing(study):
    out = submitted_job(study, "SLURM20", "--parallel", "6")
    assert out["counts"]["submit"] == 20 and out["backend"] == "slurm"
    assert len(out["arrays"]) == 1 and out["arrays"][0]["tasks"] == 20
    rows = wait_for(study, "SLURM20", all_in("completed"), timeout_s=420, what="20 completed runs")
    assert len(rows) == 20
    for label in rows:
        assert (results_dir() / "twenty" / f"{label}.csv").is_file()
        assert (results_dir() / "twenty" / f"config_{label}.json").is_file()
    again = submitted_job(study, "SLURM20")
    assert again["counts"]["submit"] == 0 and again["counts"]["completed"] == 20 and again["arrays"] == []


def test_limit_and_parallel_reach_the_array_spec(study):
    out = submitted_job(study, "SLURM20", "-n", "5", "--parallel", "2")
    assert out["counts"]["submit"] == 5 and out["counts"]["over limit"] == 15
    job_id = out["arrays"][0]["job_id"]
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert "ArrayTaskThrottle=2" in shown
    rows = states(study, "SLURM20")
    assert sum(r["state"] != "not submitted" for r in rows.values()) == 5
    subprocess.run(["scancel", job_id], check=True)


def test_cancel_then_retry_failed_resubmits_exactly_those(study):
    job = submitted_job(study, "SLURM_LONG")["arrays"][0]["job_id"]
    wait_for(study, "SLURM_LONG", all_in("running"), timeout_s=120, what="running")
    result = orchestrate(study, "cancel", "SLURM_LONG", "-y")
    assert "cancelled 2 experiments" in result.stdout and job in result.stdout
    wait_for(study, "SLURM_LONG", all_in("cancelled"), timeout_s=120, what="cancelled")
    plain = submitted_job(study, "SLURM_LONG")
    assert plain["counts"]["submit"] == 0 and plain["counts"]["failed"] == 2
    retry = submitted_job(study, "SLURM_LONG", "--retry-failed")
    assert retry["counts"]["submit"] == 2 and retry["arrays"][0]["job_id"] != job
    rows = wait_for(study, "SLURM_LONG", all_in("completed"), timeout_s=300, what="retried runs to complete")
    for label in rows:
        steps = csv_steps(results_dir() / "long" / f"{label}.csv")
        assert steps == sorted(set(steps)) and steps[-1] == 6250


def test_a_task_that_raises_is_failed_with_its_error(study):
    submitted_job(study, "SLURM_RAISES")
    rows = wait_for(study, "SLURM_RAISES", all_in("failed"), timeout_s=120, what="failed")
    assert "/nonexistent/corpus" in rows["no_data"]["reason"]


def test_a_task_killed_with_sigkill_is_failed_not_running_forever(study):
    submitted_job(study, "SLURM_LONG", "-n", "1")
    rows = wait_for(study, "SLURM_LONG", lambda rows: rows["long_0"]["state"] == "running"
                    and rows["long_0"]["optimizer_step"], timeout_s=120, what="a running task with progress")
    listed = subprocess.run(["scontrol", "listpids", rows["long_0"]["job_id"]], capture_output=True, text=True)
    pids = [line.split()[0] for line in listed.stdout.splitlines()[1:] if line.split()]
    python_pids = [p for p in pids if "python" in _comm(p)]
    assert python_pids, listed.stdout
    for pid in python_pids:
        os.kill(int(pid), 9)
    rows = wait_for(study, "SLURM_LONG", lambda rows: rows["long_0"]["state"] not in ("running", "pending"),
                    timeout_s=120, what="the killed task to end")
    assert rows["long_0"]["state"] == "failed"


def test_preemption_checkpoints_requeues_and_resumes_with_every_step_once(study):
    submitted_job(study, "SLURM_LONG", "-n", "1")
    rows = wait_for(study, "SLURM_LONG", lambda rows: (rows["long_0"]["optimizer_step"] or 0) >= 100,
                    timeout_s=120, what="100 steps")
    job = rows["long_0"]["job_id"]
    subprocess.run(["scancel", "--signal", "USR2", job], check=True)
    wait_for(study, "SLURM_LONG", lambda rows: rows["long_0"]["state"] in ("requeued", "pending"), timeout_s=60,
             what="the requeue")
    rows = wait_for(study, "SLURM_LONG", lambda rows: rows["long_0"]["state"] == "completed", timeout_s=240,
                    what="completion after the requeue")
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in shown
    status = json.loads((results_dir() / "long" / "long_0" / "status.json").read_text())
    assert status["state"] == "completed"
    steps = csv_steps(results_dir() / "long" / "long_0.csv")
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == 6250
    assert set(range(10, 6251, 10)) <= set(steps)  # every logged step, exactly once
    assert rows["long_0"]["job_id"] == job


def test_a_two_gpu_experiment_runs_two_tasks_in_one_gloo_group(study):
    submitted_job(study, "SLURM_DDP")
    rows = wait_for(study, "SLURM_DDP", all_in("completed"), timeout_s=180, what="the 2-GPU run")
    shown = subprocess.run(["sacct", "-j", rows["ddp"]["job_id"], "-P", "-n", "-o", "JobID,NTasks"],
                           capture_output=True, text=True).stdout
    assert any(line.endswith("|2") for line in shown.splitlines()), shown
    config = json.loads((results_dir() / "ddp" / "config_ddp.json").read_text())
    assert config["plan"]["data_parallel"] == 2
    rows = list(csv.DictReader(open(results_dir() / "ddp" / "ddp.csv")))
    spec_tokens = 8 * 32  # the effective batch covers both ranks
    assert int(rows[-1]["tokens_processed"]) == int(rows[-1]["optimizer_step"]) * spec_tokens


def test_a_miso_experiment_lands_on_the_miso_node(study):
    submitted_job(study, "SLURM_MISO")
    rows = wait_for(study, "SLURM_MISO", all_in("completed"), timeout_s=120, what="the miso run")
    for _ in range(20):  # slurmdbd may hold the finished job's record without its partition a moment
        shown = subprocess.run(["sacct", "-j", rows["on_miso"]["job_id"], "-X", "-P", "-n", "-o",
                                "Partition,NodeList"], capture_output=True, text=True).stdout
        if shown.strip() == "miso|miso1":
            break
        time.sleep(0.5)
    assert shown.strip() == "miso|miso1"


@pytest.mark.parametrize("args, message", [
    (["submit", "SLURM_TWENTY"], "unknown registry 'SLURM_TWENTY'"),
    (["submit", "SLURM20", "-n", "0"], "-n must be at least 1"),
    (["submit", "SLURM20", "--parallel", "0"], "--parallel must be at least 1"),
    (["submit", "SLURM20", "--backend", "slrum"], "invalid choice: 'slrum'"),
])
def test_bad_input_submits_nothing(study, args, message):
    before = queued_job_ids()
    result = orchestrate(study, *args, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert queued_job_ids() <= before
    assert not (results_dir() / "_submissions").exists()


@pytest.mark.parametrize("fields, message", [
    ("partition='sphnix'", "unknown partition 'sphnix' (did you mean 'sphinx'?)"),
    ("gpus=9", "gpus=9 exceeds partition 'sphinx'"),
])
def test_bad_experiments_submit_nothing(tmp_path, slurm_cluster, fields, message):
    path = tmp_path / "bad_study.py"
    path.write_text(f"from experiments import gen_experim\nBAD = gen_experim(16, label='x', {fields})\n")
    result = orchestrate(path, "submit", "BAD", check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (results_dir() / "_submissions").exists()


def test_a_crash_between_sbatch_and_the_record_is_repaired_not_resubmitted(study):
    from orchestrator import manifest, submission
    from orchestrator.registry import load_registry

    plan = submission.plan("SLURM_MISO", load_registry("SLURM_MISO", [str(study)]), "slurm")
    original_save = manifest.Submission.save

    def die_once_sbatch_returned(self):
        if any(array.job_id for array in self.arrays):
            raise KeyboardInterrupt("killed between sbatch and the record")
        original_save(self)

    manifest.Submission.save = die_once_sbatch_returned
    try:
        with pytest.raises(KeyboardInterrupt):
            submission.execute(plan)
    finally:
        manifest.Submission.save = original_save
    on_disk = manifest.load_submissions("SLURM_MISO")
    assert [s.state for s in on_disk] == ["submitting"] and on_disk[0].arrays[0].job_id is None
    out = submitted_job(study, "SLURM_MISO")
    assert out["repaired"] == [f"{on_disk[0].id}: submitted"]
    assert out["counts"]["submit"] == 0 and out["counts"]["active"] + out["counts"]["completed"] == 1
    rows = wait_for(study, "SLURM_MISO", all_in("completed"), timeout_s=120, what="the recovered job")
    repaired = manifest.load_submissions("SLURM_MISO")[0]
    assert rows["on_miso"]["job_id"] == repaired.arrays[0].tasks[0].job_id == repaired.arrays[0].job_id
