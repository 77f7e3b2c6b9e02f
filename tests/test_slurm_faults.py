"""The engine off the happy path, on the real local Slurm: forgotten jobs, no accounting,
shared run directories, cancelled array tasks, signals, time limits, failing sbatch,
interrupted submissions, code snapshots.

Every test drives ``python -m orchestrator`` as a user would and reads the outcome back
through ``status --json`` and the run directories (helpers from test_slurm_integration).
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from test_slurm_integration import csv_steps, orchestrate, results_dir, states, submitted_job, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REGISTRIES = textwrap.dedent("""
    from experiments import gen_experim

    TINY = dict(seq_length=32, target_effective_batch_size=8, time_min=10, mem_gb=2, cpus_per_gpu=1,
                eval_batches=2)
    LONG_RUN = dict(train_tokens=1_600_000, checkpoint_interval_steps=500, log_interval_steps=10)

    QUICK = gen_experim(16, label="quick", folder_name="quick", train_tokens=2048, **TINY)
    PAIR = [s for i in range(2) for s in gen_experim(16, label=f"pair_{i}", folder_name="pair", seed=i,
                                                      train_tokens=2048, **TINY)]
    LONG = gen_experim(32, label="long", folder_name="faults", **LONG_RUN, **TINY)
    QUEUE4 = [s for i in range(4) for s in gen_experim(32, label=f"queue_{i}", folder_name="queue", seed=i,
                                                        **LONG_RUN, **TINY)]
    SHARED_A = gen_experim(32, label="shared", folder_name="shared", **LONG_RUN, **TINY)
    SHARED_B = list(SHARED_A)
    TOO_MUCH_MEMORY = gen_experim(16, label="big_mem", folder_name="refused", **{**TINY, "mem_gb": 5000})
    TOO_MANY_CPUS = gen_experim(16, label="many_cpus", folder_name="refused", **{**TINY, "cpus_per_gpu": 40})
""")


@pytest.fixture
def study(tmp_path, slurm_cluster):
    path = tmp_path / "fault_study.py"
    path.write_text(REGISTRIES)
    return path


def job_known_to_slurmctld(job_id):
    return subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).returncode == 0


def cancel_quietly(job_id):
    subprocess.run(["scancel", job_id], capture_output=True)


def step_at_least(label, n):
    return lambda rows: rows[label]["state"] == "running" and (rows[label]["optimizer_step"] or 0) >= n


@contextlib.contextmanager
def long_run_in_progress(study, *submit_args):
    """LONG submitted and past step 20; yields (job id, its status row); cancelled at the end."""
    job = submitted_job(study, "LONG", *submit_args)["arrays"][0]["job_id"]
    try:
        yield job, wait_for(study, "LONG", step_at_least("long", 20), timeout_s=120, what="progress")["long"]
    finally:
        cancel_quietly(job)


def test_a_finished_study_still_works_once_slurm_has_forgotten_its_jobs(study):
    job = submitted_job(study, "QUICK")["arrays"][0]["job_id"]
    wait_for(study, "QUICK", lambda rows: rows["quick"]["state"] == "completed", timeout_s=120, what="completion")
    deadline = time.monotonic() + 180
    while job_known_to_slurmctld(job) and time.monotonic() < deadline:
        time.sleep(3)
    assert not job_known_to_slurmctld(job), "slurmctld never forgot the job (MinJobAge)"
    assert states(study, "QUICK")["quick"]["state"] == "completed"
    for args in (["status"], ["status", job], ["status", "qui*"], ["submit", "QUICK", "--dry-run"],
                 ["submit", "QUICK"], ["retry", "QUICK"], ["cancel", "QUICK", "-y"]):
        result = orchestrate(study, *args, check=False)
        assert result.returncode == 0 and "error" not in result.stderr, (args, result.stderr)
    assert "nothing to cancel" in orchestrate(study, "cancel", "QUICK", "-y").stdout


def test_without_accounting_status_reads_the_queue_and_the_run_directories(study, slurm_cluster):
    submitted_job(study, "QUICK")
    wait_for(study, "QUICK", lambda rows: rows["quick"]["state"] == "completed", timeout_s=120, what="completion")
    job = submitted_job(study, "LONG")["arrays"][0]["job_id"]
    wait_for(study, "LONG", step_at_least("long", 20), timeout_s=120, what="a running task")
    pid = Path("/run/slurmdbd.pid").read_text().strip()
    os.kill(int(pid), 15)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["sacct", "-n", "-j", job], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "sacct still answers with slurmdbd stopped"
            time.sleep(0.5)
        result = orchestrate(study, "status", "--json")
        notes = [line for line in result.stderr.splitlines() if "sacct cannot answer" in line]
        assert len(notes) == 1, result.stderr
        data = json.loads(result.stdout)
        assert data["QUICK"][0]["state"] == "completed"
        assert data["LONG"][0]["state"] == "running"
        subprocess.run(["scancel", job], check=True)
        rows = wait_for(study, "LONG", lambda rows: rows["long"]["state"] not in ("running", "pending"),
                        timeout_s=60, what="the cancelled run to leave the running state")
        assert rows["long"]["state"] == "interrupted" and "SIGTERM" in rows["long"]["reason"]
    finally:
        subprocess.run(["bash", str(slurm_cluster), "start"], capture_output=True, timeout=300)


def test_two_registries_sharing_a_run_directory_train_it_once(study):
    job = submitted_job(study, "SHARED_A")["arrays"][0]["job_id"]
    try:
        wait_for(study, "SHARED_A", step_at_least("shared", 20), timeout_s=120, what="A's run to train")
        seen_from_b = states(study, "SHARED_B")["shared"]
        assert seen_from_b["state"] == "running" and seen_from_b["job_id"] == job
        assert seen_from_b["registry"] == "SHARED_A"
        again = submitted_job(study, "SHARED_B")
        assert again["counts"]["submit"] == 0 and again["counts"]["active"] == 1 and again["arrays"] == []

        # a second attempt started by hand on the same directory touches nothing
        run_dir = results_dir() / "shared" / "shared"
        before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").glob("*")}
        by_hand = subprocess.run([sys.executable, "-m", "workloads.run", str(run_dir / "spec.json")],
                                 capture_output=True, text=True, timeout=120)
        assert by_hand.returncode == 0, by_hand.stderr
        assert f"is being trained by job {job}" in by_hand.stderr and "exits without touching it" in by_hand.stderr
        claim = json.loads((run_dir / "claim.json").read_text())
        assert claim["job_id"] == job
        after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").glob("*")}
        # untouched by the attempt; A may have moved on meanwhile (a new checkpoint, the old one
        # rotated away), so names only move forward (zero-padded: name order is step order)
        assert all(after[name] == mtime for name, mtime in before.items() if name in after)
        assert max(after, default="") >= max(before, default="")
        cancelled = orchestrate(study, "cancel", "SHARED_B", "-y")
        assert job in cancelled.stdout
        rows = wait_for(study, "SHARED_A", lambda rows: rows["shared"]["state"] not in ("running", "pending"),
                        timeout_s=60, what="A's job to stop")
        assert rows["shared"]["state"] == "cancelled"
        assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"  # it checkpointed
        steps = csv_steps(results_dir() / "shared" / "shared.csv")
        assert steps == sorted(set(steps))  # one writer
    finally:
        cancel_quietly(job)


def test_a_pending_task_cancelled_in_the_middle_of_an_array_is_cancelled_at_once(study):
    array = submitted_job(study, "QUEUE4", "--parallel", "1")["arrays"][0]["job_id"]
    try:
        wait_for(study, "QUEUE4", lambda rows: "running" in {r["state"] for r in rows.values()}, timeout_s=120,
                 what="the first task to run")
        subprocess.run(["scancel", f"{array}_2"], check=True)
        rows = wait_for(study, "QUEUE4", lambda rows: rows["queue_2"]["state"] == "cancelled", timeout_s=20,
                        what="the cancelled pending task to say so")
        assert {rows[f"queue_{i}"]["state"] for i in (1, 3)} <= {"pending", "running"}
        plain = submitted_job(study, "QUEUE4")
        assert plain["counts"]["submit"] == 0 and plain["counts"]["failed"] == 1
        retried = json.loads(orchestrate(study, "retry", "queue_2", "--json").stdout)
        assert retried["counts"]["submit"] == 1
        assert states(study, "QUEUE4")["queue_2"]["state"] in ("pending", "running")
        assert "cancelled 4 experiments" in orchestrate(study, "cancel", "QUEUE4", "-y").stdout
    finally:
        cancel_quietly(array)


def test_scontrol_requeue_shows_requeued_and_sigterm_shows_interrupted(study):
    with long_run_in_progress(study) as (job, before):
        subprocess.run(["scontrol", "requeue", job], check=True)
        wait_for(study, "LONG", lambda rows: rows["long"]["state"] == "requeued", timeout_s=30, what="requeued")
        # past the step it had reached: the new attempt trains (a TERM during start-up is not ours to handle)
        wait_for(study, "LONG", step_at_least("long", before["optimizer_step"] + 50), timeout_s=120,
                 what="the requeued run to train")
        subprocess.run(["scancel", "--signal", "TERM", job], check=True)
        rows = wait_for(study, "LONG", lambda rows: rows["long"]["state"] not in ("running", "pending"),
                        timeout_s=60, what="the run to stop")
        assert rows["long"]["state"] == "interrupted"
        assert "stopped by SIGTERM after step" in rows["long"]["reason"] and "checkpoint step_" in rows["long"]["reason"]


def test_a_manual_usr2_is_a_preemption_and_spends_no_timeout_credit(study):
    with long_run_in_progress(study, "--max-requeues", "0") as (job, _):
        subprocess.run(["scancel", "--signal", "USR2", job], check=True)
        wait_for(study, "LONG", lambda rows: rows["long"]["state"] == "requeued", timeout_s=60, what="requeued")
        rows = wait_for(study, "LONG", lambda rows: rows["long"]["state"] not in ("requeued", "pending", "running"),
                        timeout_s=240, what="the run to end")
        assert rows["long"]["state"] == "completed", rows["long"]
        config = json.loads((results_dir() / "faults" / "config_long.json").read_text())
        assert "/code" in config["code"] and Path(config["code"], "SNAPSHOT.json").is_file()  # a requeue runs its snapshot


def test_a_run_out_of_requeues_at_its_time_limit_ends_as_timeout_with_a_reason(study):
    with long_run_in_progress(study, "--max-requeues", "0") as (job, _):
        subprocess.run(["scontrol", "update", f"jobid={job}", "TimeLimit=2"], check=True)  # now ~100 s to go
        subprocess.run(["scancel", "--signal", "USR2", job], check=True)
        rows = wait_for(study, "LONG", lambda rows: rows["long"]["state"] not in ("running", "pending", "requeued"),
                        timeout_s=90, what="the run to end")
        assert rows["long"]["state"] == "timeout", rows["long"]
        assert "reached its time limit (2:00)" in rows["long"]["reason"] and "--max-requeues 0" in rows["long"]["reason"]
        assert "UncompletedJobError" not in rows["long"]["reason"]


@pytest.mark.parametrize("registry, message", [
    ("TOO_MUCH_MEMORY", "asks for 5000 GB of memory, but the largest node of partition 'sphinx' has"),
    ("TOO_MANY_CPUS", "asks for 40 CPUs, but the largest node of partition 'sphinx' has 32"),
])
def test_requests_beyond_the_partitions_nodes_are_refused_before_anything_is_written(study, registry, message):
    for args in (["submit", registry], ["submit", registry, "--dry-run"]):
        result = orchestrate(study, *args, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (results_dir() / "_submissions").exists() and not (results_dir() / "refused").exists()


def test_a_failing_sbatch_is_one_line_and_leaves_no_record(study, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: "
                                 "Invalid account or account/partition combination specified' >&2\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(study), "submit", "PAIR"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == ("error: sbatch failed: Batch job submission failed: Invalid account or "
                                     "account/partition combination specified")
    assert list((results_dir() / "_submissions" / "PAIR").glob("*.json")) == []
    assert {r["state"] for r in states(study, "PAIR").values()} == {"not submitted"}


def test_a_crash_inside_the_array_submission_is_found_by_name_then_repaired_and_run(study):
    import submitit.core.utils

    from orchestrator import manifest, submission
    from orchestrator.registry import load_registry

    plan = submission.plan("PAIR", load_registry("PAIR", [str(study)]), "slurm")
    original = submitit.core.utils.JobPaths.move_temporary_file

    def die_before_the_pickles_are_renamed(self, tmp_path, name, keep_as_symlink=False):
        if name == "submitted_pickle":
            raise KeyboardInterrupt("killed between sbatch and the job pickles")
        return original(self, tmp_path, name, keep_as_symlink)

    submitit.core.utils.JobPaths.move_temporary_file = die_before_the_pickles_are_renamed
    try:
        with pytest.raises(KeyboardInterrupt):
            submission.execute(plan)
    finally:
        submitit.core.utils.JobPaths.move_temporary_file = original
    record = manifest.load_submissions("PAIR")[0]
    assert record.state == "submitting" and record.arrays[0].job_id is None
    rows = states(study, "PAIR")
    assert {r["state"] for r in rows.values()} == {"pending"}, rows  # held, found by name
    array = rows["pair_0"]["job_id"].split("_")[0]
    try:
        out = submitted_job(study, "PAIR")
        assert out["repaired"] == [f"{record.id}: submitted"] and out["counts"]["submit"] == 0
        rows = wait_for(study, "PAIR", lambda rows: all(r["state"] == "completed" for r in rows.values()),
                        timeout_s=180, what="the repaired jobs to run")
        assert {r["job_id"] for r in rows.values()} == {f"{array}_0", f"{array}_1"}
    finally:
        cancel_quietly(array)


def test_jobs_run_the_code_snapshot_of_their_submission(study):
    submitted_job(study, "QUICK")
    submitted_job(study, "PAIR", "--no-snapshot")
    wait_for(study, "QUICK", lambda rows: rows["quick"]["state"] == "completed", timeout_s=120, what="QUICK")
    wait_for(study, "PAIR", lambda rows: all(r["state"] == "completed" for r in rows.values()), timeout_s=120,
             what="PAIR")
    record = json.loads(next((results_dir() / "_submissions" / "QUICK").glob("*.json")).read_text())
    code = Path(json.loads((results_dir() / "quick" / "config_quick.json").read_text())["code"])
    assert str(code) == record["arrays"][0]["code_dir"] and (code / "SNAPSHOT.json").is_file()
    assert (code / "orchestrator" / "task.py").is_file() and not (code / "tests").exists()
    unsnapshotted = Path(json.loads((results_dir() / "pair" / "config_pair_0.json").read_text())["code"])
    assert unsnapshotted == Path(__file__).resolve().parent.parent
