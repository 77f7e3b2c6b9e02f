"""One run directory, one live attempt: claims are taken, refreshed, refused and taken over."""

import datetime
import json
import os
import subprocess
import sys
import time

import pytest

from experiments import gen_experim
from orchestrator import claim
from orchestrator.paths import RunPaths, atomic_write_json

TINY = dict(partition="local", seq_length=32, target_effective_batch_size=8, eval_batches=2, train_tokens=2048)


@pytest.fixture
def paths(tmp_path):
    return RunPaths.of("f", "run", tmp_path)


def ago(seconds):
    return (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)).isoformat()


@pytest.fixture
def other_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def claim_of(process, **fields):
    return {"job_id": "77_1", "host": claim.HOST, "pid": process.pid, "pid_start": claim.process_start(process.pid),
            "started": ago(5), "refreshed": ago(5), "identity": "x", "token": "t", **fields}


def test_a_claim_names_the_attempt_and_is_released(paths, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    with claim.holding(paths, "abc") as mine:
        on_disk = json.loads(paths.claim_json.read_text())
        assert on_disk == mine and on_disk["job_id"] == "41_3" and on_disk["pid"] == os.getpid()
        assert on_disk["host"] == claim.HOST and on_disk["identity"] == "abc"
    assert not paths.claim_json.exists()


def test_a_live_claim_of_another_process_is_refused(paths, other_process):
    atomic_write_json(paths.claim_json, claim_of(other_process))
    with pytest.raises(claim.ClaimHeld, match=f"job 77_1 .*pid {other_process.pid}"):
        claim.acquire(paths, "x")
    assert json.loads(paths.claim_json.read_text())["pid"] == other_process.pid


def test_a_claim_whose_process_died_is_taken_over(paths, other_process):
    held = claim_of(other_process)
    other_process.kill()
    other_process.wait()
    atomic_write_json(paths.claim_json, held)
    mine = claim.acquire(paths, "x")
    assert json.loads(paths.claim_json.read_text())["token"] == mine["token"] != "t"


def test_a_reused_pid_does_not_keep_a_claim_alive(paths):
    atomic_write_json(paths.claim_json, {**claim_of(subprocess.Popen(["true"])), "pid": os.getpid(),
                                         "pid_start": "1", "job_id": "other"})
    assert not claim.holder_alive(claim.read(paths))


def test_another_hosts_claim_lives_while_its_slurm_job_runs_or_its_heartbeat_is_fresh():
    remote = {"host": "node-17", "pid": 1, "job_id": "55_2", "refreshed": ago(1000)}
    assert claim.holder_alive(remote, running_jobs={"55_2"})
    assert not claim.holder_alive(remote, running_jobs={"55_3"})
    by_hand = {"host": "node-17", "pid": 1, "job_id": "pid123"}
    assert claim.holder_alive({**by_hand, "refreshed": ago(10)})
    assert not claim.holder_alive({**by_hand, "refreshed": ago(claim.STALE_S + 1)})


def test_the_heartbeat_refreshes_and_stops_once_taken_over(paths):
    with claim.holding(paths, "x", refresh_s=0.05) as mine:
        first = mine["refreshed"]
        time.sleep(1.2)
        assert json.loads(paths.claim_json.read_text())["refreshed"] > first
        with claim._locked(paths):  # as a real taker does: else the heartbeat may write over it
            atomic_write_json(paths.claim_json, {**mine, "token": "someone else"})
        assert not claim.refresh(paths, mine)
    assert json.loads(paths.claim_json.read_text())["token"] == "someone else"  # not released: not ours


def test_a_second_attempt_on_a_claimed_directory_writes_nothing(tmp_path, other_process, capsys):
    from workloads.run import run

    spec = gen_experim(16, label="claimed", folder_name="f", **TINY)[0]
    paths = RunPaths.of("f", "claimed", tmp_path)
    atomic_write_json(paths.spec_json, spec.to_dict())
    atomic_write_json(paths.claim_json, claim_of(other_process, identity=spec.identity))
    status = run(paths.spec_json, root=tmp_path)
    assert status["state"] == "claimed elsewhere"
    assert "is being trained by job 77_1" in capsys.readouterr().err
    assert sorted(p.name for p in paths.run_dir.iterdir()) == [".claim.lock", "claim.json", "spec.json"]
    assert not paths.metrics_csv.exists() and not paths.config_json.exists()


def test_a_run_takes_over_a_dead_attempts_claim_and_completes(tmp_path, data_cache):
    from workloads.run import run

    spec = gen_experim(16, label="orphan", folder_name="f", **TINY)[0]
    paths = RunPaths.of("f", "orphan", tmp_path)
    atomic_write_json(paths.spec_json, spec.to_dict())
    dead = subprocess.Popen(["true"])
    dead.wait()
    atomic_write_json(paths.claim_json, claim_of(dead, identity=spec.identity))
    status = run(paths.spec_json, root=tmp_path, data_cache=data_cache)
    assert status["state"] == "completed" and not paths.claim_json.exists()
