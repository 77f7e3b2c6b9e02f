"""The embedded default: the same commands on this machine, without a cluster."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator import manifest
from orchestrator.registry import load_registry
from orchestrator.status import experiment_states

pytestmark = pytest.mark.slow

REGISTRIES = textwrap.dedent("""
    from experiments import gen_experim

    TINY = dict(partition="local", seq_length=32, target_effective_batch_size=8, eval_batches=2)
    LOCAL4 = [s for i in range(4)
              for s in gen_experim(16, label=f"tiny_{i}", folder_name="local4", train_tokens=2048 * (i + 1), **TINY)]
    # minutes of training: it is cancelled long before it could finish
    LOCAL_SLOW = gen_experim(32, label="slow", folder_name="slow", train_tokens=50_000_000, **TINY)
""")


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "local_study.py"
    path.write_text(REGISTRIES)
    return path


def orchestrate(study, *args):
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(study), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def states(study, registry):
    data = json.loads(orchestrate(study, "status", registry, "--json").stdout)
    return {row["label"]: row["state"] for row in data[registry]}


def wait_for(study, registry, predicate, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = states(study, registry)
        print(time.strftime("%H:%M:%S"), current, flush=True)
        if predicate(current):
            return current
        time.sleep(1)
    raise AssertionError(f"timed out: {current}")


def test_local_backend_runs_everything_and_a_second_submit_submits_nothing(study):
    out = json.loads(orchestrate(study, "submit", "LOCAL4", "--backend", "local", "--json").stdout)
    assert out["backend"] == "local" and out["counts"]["submit"] == 4
    wait_for(study, "LOCAL4", lambda s: set(s.values()) == {"completed"})
    results = Path(os.environ["ORCHESTRATOR_RESULTS_DIR"]) / "local4"
    assert sorted(p.name for p in results.glob("*.csv")) == [f"tiny_{i}.csv" for i in range(4)]
    again = json.loads(orchestrate(study, "submit", "LOCAL4", "--json").stdout)
    assert again["backend"] == "local" and again["counts"] == {**again["counts"], "submit": 0, "completed": 4}


def test_cancelling_a_local_job_stops_it_and_retry_resumes_it(study):
    orchestrate(study, "submit", "LOCAL_SLOW", "--backend", "local")
    wait_for(study, "LOCAL_SLOW", lambda s: s["slow"] == "running", timeout_s=60)
    out = orchestrate(study, "cancel", "LOCAL_SLOW", "-y").stdout
    assert "cancelled 1 experiments" in out
    assert wait_for(study, "LOCAL_SLOW", lambda s: s["slow"] != "running", timeout_s=60)["slow"] == "cancelled"
    status = json.loads(orchestrate(study, "status", "LOCAL_SLOW", "--json").stdout)["LOCAL_SLOW"][0]
    assert status["state"] == "cancelled"
    retried = json.loads(orchestrate(study, "retry", "LOCAL_SLOW", "--json").stdout)
    assert retried["counts"]["submit"] == 1
    wait_for(study, "LOCAL_SLOW", lambda s: s["slow"] == "running", timeout_s=60)
    orchestrate(study, "cancel", "LOCAL_SLOW", "-y")
    wait_for(study, "LOCAL_SLOW", lambda s: s["slow"] == "cancelled", timeout_s=60)


def test_debug_backend_runs_in_process(study):
    out = json.loads(orchestrate(study, "submit", "LOCAL4", "--backend", "debug", "-n", "2", "--json").stdout)
    assert out["counts"]["submit"] == 2
    assert list(states(study, "LOCAL4").values()) == ["completed", "completed", "not submitted", "not submitted"]


def test_a_dead_runner_whose_run_never_finished_is_missing_not_running(study, monkeypatch):
    specs = load_registry("LOCAL4", [str(study)])
    record = manifest.ArrayRecord(name="x", backend="local", resources={}, parallel=1, log_folder="",
                                  tasks=[manifest.TaskRecord(0, specs[0].identity, specs[0].label,
                                                             specs[0].folder_name, "spec.json")],
                                  job_id="999999999")
    submission = manifest.new_submission("LOCAL4", [record])
    submission.state = "submitted"
    submission.save()
    from orchestrator.paths import RunPaths, atomic_write_json
    atomic_write_json(RunPaths.of(specs[0].folder_name, specs[0].label).status_json,
                      {"state": "running", "identity": specs[0].identity, "optimizer_step": 3})
    states_now = experiment_states(specs, manifest.load_submissions("LOCAL4"))
    assert [s.state for s in states_now] == ["missing", "not submitted", "not submitted", "not submitted"]


def test_an_interrupted_local_submission_is_marked_abandoned(study):
    specs = load_registry("LOCAL4", [str(study)])
    record = manifest.ArrayRecord(name="orch-x", backend="local", resources={}, parallel=1, log_folder="",
                                  tasks=[manifest.TaskRecord(0, specs[0].identity, specs[0].label,
                                                             specs[0].folder_name, "spec.json")])
    manifest.new_submission("LOCAL4", [record]).save()  # died before the job existed
    out = json.loads(orchestrate(study, "submit", "LOCAL4", "--backend", "debug", "-n", "1", "--json").stdout)
    assert out["repaired"] and out["repaired"][0].endswith("abandoned")
    assert out["counts"]["submit"] == 1


def test_two_submits_at_once_submit_each_experiment_once(study):
    command = [sys.executable, "-m", "orchestrator", "--registry-module", str(study), "submit", "LOCAL4",
               "--backend", "local", "--json"]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in both]
    assert sorted(o["counts"]["submit"] for o in outs) == [0, 4]
    wait_for(study, "LOCAL4", lambda s: set(s.values()) == {"completed"})
    submitted = [t.identity for s in manifest.load_submissions("LOCAL4") for a in s.arrays for t in a.tasks]
    assert len(submitted) == len(set(submitted)) == 4


def test_the_time_limit_is_told_from_the_jobs_real_end_time(tmp_path, monkeypatch):
    import datetime

    from orchestrator.task import near_time_limit

    now = datetime.datetime(2026, 12, 1, 12, 0, 0)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    for end, expected in (("2026-12-01T12:01:40", True), ("2026-12-01T12:08:00", False)):
        squeue.write_text(f"#!/bin/sh\necho '{end}|10:00'\n")
        squeue.chmod(0o755)
        assert near_time_limit({"SLURM_JOB_ID": "5"}, now) == (expected, "10:00")
    assert near_time_limit({}, now) == (None, "")
