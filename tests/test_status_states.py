"""Status from records, run directories and a scheduler, without a cluster: fake Slurm tools
on PATH answer (and log) what a real one would."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from experiments import gen_experim
from orchestrator import manifest, scheduler
from orchestrator.paths import RunPaths, atomic_write_json, atomic_write_text

REGISTRIES = textwrap.dedent("""
    from experiments import gen_experim

    TINY = dict(seq_length=32, target_effective_batch_size=8, train_tokens=2048)
    ALPHA = [s for i in range(3) for s in gen_experim(16, label=f"a{i}", folder_name="alpha", seed=i, **TINY)]
    BETA = [s for i in range(2) for s in gen_experim(16, label=f"b{i}", folder_name="beta", seed=i, **TINY)]
    LOCAL = [s for i in range(2) for s in gen_experim(16, label=f"l{i}", folder_name="loc", seed=i,
                                                       partition="local", **TINY)]
""")


@pytest.fixture
def module(tmp_path):
    path = tmp_path / "status_registries.py"
    path.write_text(REGISTRIES)
    return path


def registry(module, name):
    from orchestrator.registry import load_registry

    return load_registry(name, [str(module)])


def record(name, specs, backend="slurm", job_id="500", state="submitted", created=None):
    tasks = [manifest.TaskRecord(i, s.identity, s.label, s.folder_name,
                                 str(RunPaths.of(s.folder_name, s.label).spec_json)) for i, s in enumerate(specs)]
    array = manifest.ArrayRecord(name=f"orch-{name}-x-0", backend=backend, resources={"time_min": 10}, parallel=1,
                                 log_folder="/nonexistent", tasks=tasks, job_id=job_id)
    submission = manifest.new_submission(name, [array])
    submission.state = state
    if created:
        submission.created = created
    submission.save()
    return submission


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sacct and squeue that log their arguments and print the canned text in <tool>.out."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sacct", "squeue", "sbatch", "scontrol", "sinfo"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls.log\n'
                                    f'cat {tmp_path}/{tool}.out 2>/dev/null\nexit 0\n')
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def answer(tool, text):
        (tmp_path / f"{tool}.out").write_text(textwrap.dedent(text).lstrip())

    def calls():
        log = tmp_path / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    answer.calls = calls
    return answer


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(module), *args],
                          capture_output=True, text=True, timeout=120)


def json_of(module, *args):
    result = cli(module, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_plain_status_asks_slurm_once_in_all_for_every_registry(module, fake_slurm):
    record("ALPHA", registry(module, "ALPHA"), job_id="500")
    record("BETA", registry(module, "BETA"), job_id="600")
    fake_slurm("squeue", """
        500_0|RUNNING|1:00|orch-ALPHA-x-0|None|0|
        600_1|PENDING|0:00|orch-BETA-x-0|Priority|0|
    """)
    result = cli(module, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert [c.split()[0] for c in fake_slurm.calls()] == ["sacct", "squeue"]
    assert "500,600" in fake_slurm.calls()[0]
    data = json.loads(result.stdout)
    assert data["ALPHA"][0]["state"] == "running" and data["BETA"][1]["state"] == "pending"


def test_a_tasks_own_sacct_row_wins_over_the_arrays_range_row(module, fake_slurm):
    record("ALPHA", registry(module, "ALPHA"), job_id="101")
    fake_slurm("sacct", """
        101_0|COMPLETED|00:00:09|0:0
        101_1|FAILED|00:00:07|9:0
        101_[1-2%2]|CANCELLED by 0|00:00:00|0:0
    """)
    rows = {r["label"]: r for r in json_of(module, "status", "ALPHA", "--json")["ALPHA"]}
    assert rows["a1"]["state"] == "failed" and rows["a1"]["elapsed"] == "00:00:07"
    assert rows["a2"]["state"] == "cancelled"
    assert rows["a0"]["state"] == "failed"  # the job ended, but its run never completed


def test_a_pending_task_cancelled_alone_is_cancelled_not_pending(module, fake_slurm):
    record("ALPHA", registry(module, "ALPHA"), job_id="38")
    fake_slurm("sacct", "38_0|RUNNING|00:00:30|0:0\n38_[1-2%1]|PENDING|00:00:00|0:0\n")
    fake_slurm("squeue", "38_0|RUNNING|0:30|orch-ALPHA-x-0|None|0|\n38_2|PENDING|0:00|orch-ALPHA-x-0|JobArrayTaskLimit|0|\n")
    rows = {r["label"]: r for r in json_of(module, "status", "ALPHA", "--json")["ALPHA"]}
    assert [rows[f"a{i}"]["state"] for i in range(3)] == ["running", "cancelled", "pending"]
    assert "cancelled while pending" in rows["a1"]["reason"]
    planned = json_of(module, "submit", "ALPHA", "--json", "--dry-run", "--retry-failed")
    assert planned["counts"] == {"submit": 1, "completed": 0, "active": 2, "failed": 0, "over limit": 0, "blocked": 0}


def test_a_job_the_scheduler_forgot_reads_its_run_directory_and_sacct(module, fake_slurm, tmp_path):
    specs = registry(module, "ALPHA")
    record("ALPHA", specs, job_id="44")
    for spec in specs[:2]:
        atomic_write_json(RunPaths.of(spec.folder_name, spec.label).status_json,
                          {"state": "completed", "identity": spec.identity, "optimizer_step": 8})
    fake_slurm("sacct", "44_0|COMPLETED|00:00:09|0:0\n44_1|COMPLETED|00:00:09|0:0\n44_2|TIMEOUT|00:10:00|0:0\n")
    (tmp_path / "bin" / "squeue").write_text(  # Slurm 22.05 on one forgotten id: exit 1
        '#!/bin/sh\ncase "$*" in *-j*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;; esac\n')
    result = cli(module, "status", "ALPHA", "--json")
    assert result.returncode == 0 and result.stderr == ""
    assert [r["state"] for r in json.loads(result.stdout)["ALPHA"]] == ["completed", "completed", "timeout"]


def test_without_accounting_a_run_that_left_the_queue_is_never_running(module, fake_slurm, tmp_path):
    specs = registry(module, "ALPHA")
    record("ALPHA", specs, job_id="70")
    done, left, interrupted = (RunPaths.of(s.folder_name, s.label) for s in specs)
    atomic_write_json(done.status_json, {"state": "completed", "identity": specs[0].identity})
    atomic_write_json(left.status_json, {"state": "running", "identity": specs[1].identity})
    atomic_write_json(interrupted.status_json, {"state": "interrupted", "identity": specs[2].identity,
                                                "reason": "stopped by SIGTERM after step 9 (checkpoint step_9.pt)"})
    (tmp_path / "bin" / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\n"
                                            "exit 1\n")
    result = cli(module, "status", "--json")
    assert result.returncode == 0
    assert result.stderr.count("sacct cannot answer (Slurm accounting storage is disabled)") == 1
    rows = json.loads(result.stdout)["ALPHA"]
    assert [r["state"] for r in rows] == ["completed", "missing", "interrupted"]
    assert "left the queue while running" in rows[1]["reason"] and "SIGTERM" in rows[2]["reason"]


def test_another_registrys_attempt_on_the_same_run_directory_is_seen(module, fake_slurm):
    alpha = registry(module, "ALPHA")
    submission = record("ALPHA", alpha, job_id="900")
    for spec, task in zip(alpha, submission.arrays[0].tasks):  # what execute() leaves in each run directory
        atomic_write_json(RunPaths.of(task.folder_name, task.label).spec_json,
                          {"spec": spec.to_dict(), "submission": manifest.Attempt.pointer(submission, 0, task)})
    fake_slurm("squeue", "900_0|RUNNING|0:10|orch-ALPHA-x-0|None|0|\n")
    shared = module.parent / "shared.py"
    shared.write_text(REGISTRIES + "\nALPHA_AGAIN = list(ALPHA)\n")
    rows = json_of(shared, "status", "ALPHA_AGAIN", "--json")["ALPHA_AGAIN"]
    assert rows[0]["state"] == "running" and rows[0]["job_id"] == "900_0" and rows[0]["registry"] == "ALPHA"
    planned = json_of(shared, "submit", "ALPHA_AGAIN", "--json", "--dry-run")
    assert planned["counts"]["active"] == 1


def test_an_interrupted_submission_is_found_by_name_until_it_is_repaired(module, fake_slurm):
    record("ALPHA", registry(module, "ALPHA"), job_id=None, state="submitting")
    fake_slurm("squeue", "".join(f"812_{i}|PENDING|0:00|orch-ALPHA-x-0|JobHeldUser|0|\n" for i in range(3)))
    rows = json_of(module, "status", "ALPHA", "--json")["ALPHA"]
    assert [(r["state"], r["job_id"]) for r in rows] == [("pending", f"812_{i}") for i in range(3)]
    assert "next submit records and releases it" in rows[0]["reason"]


@pytest.mark.parametrize("garbage", ["{", "{}", "[1, 2]", '{"id": 3}', "\x00\x01"])
def test_one_torn_record_is_reported_once_and_everything_else_works(module, garbage):
    local = registry(module, "LOCAL")
    record("LOCAL", local, backend="local", job_id="999999")
    bad = manifest.submissions_dir("LOCAL") / "20990101T000000-bad.json"
    bad.write_text(garbage)
    for args in (["status"], ["status", "LOCAL"], ["status", "l*"], ["status", "999999"], ["submit", "LOCAL", "--dry-run"],
                 ["retry", "LOCAL", "--dry-run"], ["cancel", "LOCAL", "-y"]):
        result = cli(module, *args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)
        warnings = [line for line in result.stderr.splitlines() if str(bad) in line]
        assert len(warnings) == 1 and warnings[0].startswith("warning: skipping unreadable"), result.stderr
    assert bad.read_text() == garbage


def test_a_torn_status_json_is_reported_by_path(module):
    local = registry(module, "LOCAL")
    record("LOCAL", local, backend="local", job_id="999999")
    path = RunPaths.of(local[0].folder_name, local[0].label).status_json
    atomic_write_text(path, '{"state": "runn')
    result = cli(module, "status", "LOCAL", "--json")
    assert result.returncode == 0 and f"warning: skipping unreadable {path}" in result.stderr
    assert path.read_text() == '{"state": "runn'


def completed_run(spec, csv_text):
    paths = RunPaths.of(spec.folder_name, spec.label)
    atomic_write_json(paths.config_json, {"spec": spec.to_dict(), "identity": spec.identity, "derived": spec.derived()})
    atomic_write_json(paths.status_json, {"state": "completed", "identity": spec.identity,
                                          "optimizer_step": spec.optimizer_steps, "loss": 2.0, "val_loss": 2.1})
    atomic_write_text(paths.metrics_csv, csv_text)
    return paths


def test_a_truncated_csv_and_a_nan_loss_read_the_same_in_status_and_analyze(module):
    torn, nan = registry(module, "LOCAL")
    steps = torn.optimizer_steps
    header = "optimizer_step,tokens_processed,loss,val_loss\n"
    torn_csv = completed_run(torn, header + f"1,256,3.0,\n{steps},{steps * 256},2.0,2.1\n{steps + 1},9").metrics_csv
    nan_csv = completed_run(nan, header + f"1,256,3.0,\n{steps},{steps * 256},nan,\n").metrics_csv
    record("LOCAL", [torn, nan], backend="local", job_id="999999")
    rows = json_of(module, "status", "LOCAL", "--json")["LOCAL"]
    assert rows[0]["reason"] == f"{torn_csv}: truncated: the last line is incomplete"
    assert rows[0]["loss"] == 2.0 and rows[0]["val_loss"] == 2.1  # the numbers of status.json
    assert rows[1]["state"] == "diverged" and rows[1]["reason"] == f"{nan_csv}: non-finite training loss in the CSV"

    from analysis.loader import load_runs

    study = load_runs([RunPaths.of(s.folder_name, s.label) for s in (torn, nan)])
    assert study.problems.to_dict("records") == [{"path": str(torn_csv),
                                                   "problem": "truncated: the last line is incomplete"}]
    assert study.excluded.to_dict("records") == [{"run": "loc/l1", "state": "diverged",
                                                   "reason": "non-finite training loss in the CSV"}]


def test_a_dry_run_writes_nothing_and_a_submit_leaves_only_a_hidden_lock(module):
    assert cli(module, "submit", "LOCAL", "--dry-run", "--backend", "local").returncode == 0
    assert not Path(os.environ["ORCHESTRATOR_RESULTS_DIR"]).exists()
    with manifest.submit_lock():
        pass
    assert [p.name for p in manifest.submissions_dir().iterdir()] == [".lock"]


def test_sacct_rows_are_read_per_task_before_ranges():
    view = scheduler.View()
    scheduler._read_sacct("7_[3-4]|PENDING|00:00:00|0:0\n7_1|FAILED|00:00:01|1:0\n7|COMPLETED|00:00:02|0:0\n", view)
    assert set(view.ended) == {"7_1", "7"} and set(view.ranges) == {"7_3", "7_4"}
    assert view.known_arrays == {"7"}


def test_a_run_directory_holding_another_experiment_is_refused_at_submit(module):
    first = registry(module, "LOCAL")[0]
    other = gen_experim(24, label=first.label, folder_name=first.folder_name, partition="local",
                        seq_length=32, target_effective_batch_size=8, train_tokens=2048)[0]
    paths = RunPaths.of(first.folder_name, first.label)
    atomic_write_json(paths.status_json, {"state": "completed", "identity": other.identity})
    result = cli(module, "submit", "LOCAL", "--backend", "local", "--dry-run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"{paths.run_dir} holds experiment {other.identity} (completed), not {first.identity}" in result.stderr


def test_the_local_backend_fills_the_elapsed_column(module):
    import datetime

    running, done = registry(module, "LOCAL")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record("LOCAL", [running, done], backend="local", job_id=str(sleeper.pid))
        started = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=75)).isoformat()
        from orchestrator import claim

        atomic_write_json(RunPaths.of(running.folder_name, running.label).claim_json,
                          {"job_id": str(sleeper.pid), "host": claim.HOST, "pid": sleeper.pid,
                           "pid_start": claim.process_start(sleeper.pid), "started": started, "refreshed": started,
                           "identity": running.identity})
        atomic_write_json(RunPaths.of(running.folder_name, running.label).status_json,
                          {"state": "running", "identity": running.identity})
        atomic_write_json(RunPaths.of(done.folder_name, done.label).status_json,
                          {"state": "completed", "identity": done.identity, "elapsed_s": 3725.4})
        rows = json_of(module, "status", "LOCAL", "--json")["LOCAL"]
        hours, minutes, seconds = map(int, rows[0]["elapsed"].split(":"))
        assert rows[0]["state"] == "running" and 75 <= 3600 * hours + 60 * minutes + seconds < 135  # a loaded box
        assert rows[1]["state"] == "completed" and rows[1]["elapsed"] == "1:02:05"
    finally:
        sleeper.kill()
        sleeper.wait()
