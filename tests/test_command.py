"""The command workload: an existing trainer run as it is (a stand-in trainer plays lingua).

Spec checks (placeholders, metrics keys, identity), the metrics adapters (lingua, jsonl, csv;
torn lines, garbage, replays after a resume), and the supervisor around a real process: a
finished run, a failing command, a command that writes no metrics, a stop signal forwarded to
the command and the resumed run, a working directory whose code changed since the spec was made.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, atomic_write_json
from orchestrator.spec import load_spec, spec_from_dict
from workloads.command import code_commit, command_experim
from workloads.command.metrics import GIB_IN_GB, MetricsTail
from workloads.interrupt import EXIT_REQUEUE

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "tests" / "fixtures" / "standin_trainer.py"
COMMAND = f"{{python}} {STANDIN} config={{config_path}}"
LAW = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}


def standin(label="run", steps=20, step_s=0.01, extra_args="", n_params=1_000_000, **fields):
    config = {"dump_dir": "{run_dir}", "steps": "{steps}", "batch_size": 4, "seq_len": 64, "log_freq": 5,
              "checkpoint_every": 10, "step_s": step_s, "n_params": n_params, "law": LAW}
    fields = {"partition": "local", "params": n_params, "config": config, **fields}
    return command_experim(COMMAND + extra_args, label=label, steps=steps, **fields)[0]


def write_spec(spec) -> Path:
    paths = RunPaths.of(spec.folder_name, spec.label)
    atomic_write_json(paths.spec_json, {"spec": spec.to_dict()})
    return paths.spec_json


def run_supervisor(spec, **kwargs):
    """``python -m workloads.run`` on the spec, as a job runs it."""
    return subprocess.Popen([sys.executable, "-m", "workloads.run", str(write_spec(spec))], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def csv_rows(spec):
    with open(RunPaths.of(spec.folder_name, spec.label).metrics_csv, newline="") as handle:
        return list(csv.DictReader(handle))


def status_of(spec):
    return json.loads(RunPaths.of(spec.folder_name, spec.label).status_json.read_text())


# ------------------------------------------------------------------------- specs
def test_an_unknown_placeholder_is_an_error_naming_the_valid_ones():
    with pytest.raises(UsageError, match=r"unknown placeholder '\{gpu\}'.*did you mean '\{gpus\}'|unknown placeholder"):
        command_experim("torchrun --nproc_per_node={gpu} train.py", label="x", steps=10)
    with pytest.raises(UsageError, match=r"config\.dump_dir: .*'\{rundir\}'"):
        command_experim("train.py {config_path}", label="x", steps=10, config={"dump_dir": "{rundir}"})
    with pytest.raises(UsageError, match=r"env\['HOME2'\]"):
        command_experim("train.py", label="x", steps=10, env={"HOME2": "{home}"})


def test_config_path_needs_a_config_and_literal_braces_are_doubled():
    with pytest.raises(UsageError, match="uses {config_path} but the spec has no config"):
        command_experim("train.py config={config_path}", label="x", steps=10)
    with pytest.raises(UsageError, match="literal braces"):
        command_experim("echo ${HOME}", label="x", steps=10)
    assert command_experim("echo ${{HOME}}", label="x", steps=10)[0].command == "echo ${{HOME}}"


def test_a_command_has_no_learning_rate_and_needs_its_steps():
    with pytest.raises(UsageError, match="unknown experiment field 'learning_rate'"):
        command_experim("train.py", label="x", steps=10, learning_rate=1e-3)
    with pytest.raises(UsageError, match="'steps' is required"):
        command_experim("train.py", label="x")


def test_metrics_keys_are_checked_against_the_format_and_the_columns():
    with pytest.raises(UsageError, match="needs metrics_keys for optimizer_step, loss, tokens_processed"):
        command_experim("train.py", label="x", steps=10, metrics_format="jsonl")
    with pytest.raises(UsageError, match="'train_loss' is not a metrics column"):
        command_experim("train.py", label="x", steps=10, metrics_format="csv",
                        metrics_keys={"optimizer_step": "step", "train_loss": "loss"})
    with pytest.raises(UsageError, match="metrics_keys is for jsonl and csv"):
        command_experim("train.py", label="x", steps=10, metrics_keys={"loss": "l"})
    ok = command_experim("train.py", label="x", steps=10, metrics_format="csv", tokens_per_step=256,
                         metrics_keys={"optimizer_step": "step", "loss": "loss"})[0]
    assert ok.metrics_file == "metrics.csv" and ok.tokens == 2560


def test_identity_covers_command_config_seed_and_commit_not_where_or_how_it_runs(tmp_path):
    base = standin()
    assert spec_from_dict(json.loads(json.dumps(base.to_dict()))).identity == base.identity
    same = [base.replace(workdir=str(tmp_path)), base.replace(env={"NCCL_DEBUG": "INFO"}), base.replace(gpus=2),
            base.replace(params=5), base.replace(metrics_file="m.jsonl")]
    assert {s.identity for s in same} == {base.identity}
    changed = [base.replace(command=COMMAND + " fail_at=3"), base.replace(seed=1),
               base.replace(config={**base.config, "step_s": 0.02}), base.replace(code_commit="abc123")]
    assert len({s.identity for s in changed} | {base.identity}) == len(changed) + 1
    with pytest.raises(TypeError, match="read-only"):
        base.config["step_s"] = 1


def test_the_workdirs_commit_is_part_of_the_identity_and_uncommitted_changes_count(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    code_commit.cache_clear()
    clean = command_experim("python train.py", label="x", steps=10, workdir=str(tmp_path))[0]
    assert len(clean.code_commit) == 40
    (tmp_path / "train.py").write_text("print(2)\n")
    code_commit.cache_clear()
    dirty = command_experim("python train.py", label="x", steps=10, workdir=str(tmp_path))[0]
    assert dirty.code_commit.startswith(clean.code_commit + "+dirty-") and dirty.identity != clean.identity


def test_one_slurm_task_holds_all_of_a_commands_gpus():
    from orchestrator.backends import slurm_parameters
    from orchestrator.profiles import get_profile
    from orchestrator.submission import resources

    spec = command_experim("torchrun --nproc_per_node={gpus} x.py", label="x", steps=10, partition="miso", gpus=8)[0]
    params = slurm_parameters(get_profile("miso"), resources(spec), 1, "x", 3)
    assert (params["ntasks_per_node"], params["gpus_per_task"], params["cpus_per_task"]) == (1, 8, 8 * 12)
    spec = spec.replace(partition="sphinx", gpus=1)
    params = slurm_parameters(get_profile("sphinx"), resources(spec), 1, "x", 3)
    assert (params["ntasks_per_node"], params["gres"]) == (1, "gpu:1")


# ---------------------------------------------------------------------- adapters
def lingua_line(step, loss=2.0, tokens=None):
    return json.dumps({"global_step": step, "acc_step": 0, "speed": {"wps": 75000.0, "FLOPS": 1.2e14,
                       "curr_iter_time": 0.2, "data_load_time": 0.01},
                       "optim": {"grad_norm": 0.7, "lr": 3e-4, "total_tokens": tokens or step * 131072},
                       "memory": {"max_active_gib": 10.0, "max_reserved_gib": 12.0}, "loss/out": loss}) + "\n"


def test_lingua_metrics_become_standard_rows_with_per_gpu_and_total_rates(tmp_path):
    spec = standin(gpus=2, params=27_500_000)
    path = tmp_path / "metrics.jsonl"
    path.write_text(lingua_line(10) + lingua_line(20, loss=1.5))
    tail = MetricsTail(path, spec, peak_flops_per_gpu=312e12)
    rows = [r.values for r in tail.read()]
    assert [r["optimizer_step"] for r in rows] == [10, 20]
    first = rows[0]
    assert first["tokens_processed"] == 10 * 131072 and first["loss"] == 2.0 and first["learning_rate"] == 3e-4
    assert first["tokens_per_s_per_gpu"] == 75000 and first["tokens_per_s"] == 150000 and first["ranks"] == 2
    assert first["mfu"] == pytest.approx(150000 * 6 * 27.5e6 / (2 * 312e12), rel=1e-5)
    assert first["peak_mem_allocated_gb"] == pytest.approx(10 * GIB_IN_GB)
    assert first["theoretical_flops_chinchilla"] == 6 * 27_500_000 * 10 * 131072


def test_a_line_being_written_waits_and_a_garbage_line_is_reported_and_skipped(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    full = lingua_line(30)
    path.write_text(lingua_line(10) + "{not json\n" + full[:25])
    tail = MetricsTail(path, standin(), 989e12)
    assert [r.values["optimizer_step"] for r in tail.read()] == [10]
    assert "not JSON" in capsys.readouterr().err
    with open(path, "a") as handle:
        handle.write(full[25:])
    assert [r.values["optimizer_step"] for r in tail.read()] == [30]
    assert tail.read() == []


def test_a_replayed_step_after_a_resume_supersedes_the_rows_from_there(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(lingua_line(s) for s in (10, 20, 30)) + lingua_line(20, loss=9.0))
    rows = MetricsTail(path, standin(), 989e12).read()
    assert [(r.values["optimizer_step"], r.replaces) for r in rows] == [(10, False), (20, False), (30, False),
                                                                        (20, True)]


def test_csv_and_nested_jsonl_logs_map_through_metrics_keys(tmp_path):
    spec = command_experim("t", label="c", steps=5, metrics_format="csv", tokens_per_step=100,
                           metrics_keys={"optimizer_step": "it", "loss": "train/loss", "tokens_per_s": "tps"})[0]
    path = tmp_path / "m.csv"
    path.write_text("it,train/loss,tps\n1,3.5,800\n2,3.25,1000\n")
    rows = [r.values for r in MetricsTail(path, spec, 989e12).read()]
    assert rows == [{"optimizer_step": 1, "loss": 3.5, "tokens_per_s": 800.0, "ranks": 1, "tokens_processed": 100,
                     "tokens_per_s_per_gpu": 800.0},
                    {"optimizer_step": 2, "loss": 3.25, "tokens_per_s": 1000.0, "ranks": 1, "tokens_processed": 200,
                     "tokens_per_s_per_gpu": 1000.0}]
    spec = command_experim("t", label="j", steps=5, metrics_format="jsonl",
                           metrics_keys={"optimizer_step": "step", "loss": "train/loss", "tokens_processed": "tokens"})[0]
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"step": 3, "train": {"loss": 2.5}, "tokens": 96}) + "\n")
    row = MetricsTail(path, spec, 989e12).read()[0].values
    assert (row["optimizer_step"], row["loss"], row["tokens_processed"]) == (3, 2.5, 96)


# -------------------------------------------------------------------- supervisor
def test_a_finished_command_completes_with_the_standard_csv_and_its_config(tmp_path):
    spec = standin(steps=20)
    process = run_supervisor(spec)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    rows = csv_rows(spec)
    assert [int(r["optimizer_step"]) for r in rows] == [1, 5, 10, 15, 20]
    assert int(rows[-1]["tokens_processed"]) == 20 * 4 * 64
    status = status_of(spec)
    assert status["state"] == "completed" and status["loss"] == pytest.approx(float(rows[-1]["loss"]))
    paths = RunPaths.of(spec.folder_name, spec.label)
    config = json.loads(paths.config_json.read_text())
    assert config["derived"]["total_params"] == 1_000_000 and str(paths.run_dir.resolve()) in config["command"]
    import yaml

    written = yaml.safe_load((paths.run_dir / "config.yaml").read_text())
    assert written["steps"] == 20 and written["dump_dir"] == str(paths.run_dir.resolve())


def test_a_failing_command_is_failed_with_its_last_lines():
    spec = standin(label="fails", extra_args=" fail_at=12")
    process = run_supervisor(spec)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 1, out
    status = status_of(spec)
    assert status["state"] == "failed" and status["optimizer_step"] == 10
    assert "ended at step 10 with exit status 3" in status["error"]
    assert "RuntimeError: CUDA error: an illegal memory access" in status["error"]


def test_a_command_that_writes_no_metrics_is_reported_as_such():
    spec = standin(label="silent", extra_args=" no_metrics=1")
    process = run_supervisor(spec)
    out, _ = process.communicate(timeout=120)
    status = status_of(spec)
    assert process.returncode == 1 and status["state"] == "failed", out
    assert "wrote no metrics to" in status["error"] and "metrics.jsonl (metrics_format lingua)" in status["error"]


def test_exit_zero_before_the_planned_steps_is_a_failure_not_a_completion():
    spec = standin(label="short", steps=20).replace(config={**standin().config, "steps": 10})
    process = run_supervisor(spec)
    process.communicate(timeout=120)
    status = status_of(spec)
    assert status["state"] == "failed" and "ended at step 10 of 20 with exit status 0" in status["error"]


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM])
def test_a_stop_signal_is_forwarded_and_the_next_start_resumes_the_command(signum):
    spec = standin(label=f"stopped_{signum.name}", steps=300, step_s=0.03)
    process = run_supervisor(spec, start_new_session=True)  # the signal reaches the supervisor alone
    deadline = time.monotonic() + 60
    while not (RunPaths.of(spec.folder_name, spec.label).metrics_csv.exists() and len(csv_rows(spec)) >= 3):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()[0]
        time.sleep(0.1)
    process.send_signal(signum)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == EXIT_REQUEUE, out
    assert f"forwarded {signum.name} to the command" in out
    status = status_of(spec)
    assert status["state"] == "interrupted" and status["interrupted_by"] == signum.name
    stopped_at = status["optimizer_step"]
    assert 10 <= stopped_at < 300
    log = (RunPaths.of(spec.folder_name, spec.label).log_dir / "command.log").read_text()
    assert f"preempted by {signum.name.removeprefix('SIG')}" in log

    process = run_supervisor(spec)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    steps = [int(r["optimizer_step"]) for r in csv_rows(spec)]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # the replayed steps replaced, none twice
    assert "resuming from step" in (RunPaths.of(spec.folder_name, spec.label).log_dir / "command.log").read_text()
    assert status_of(spec)["state"] == "completed"


def test_a_workdir_whose_code_changed_since_the_spec_was_made_is_refused(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "t.py").write_text("")
    subprocess.run(["git", "-C", str(tmp_path), "add", "t.py"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "1"],
                   check=True)
    code_commit.cache_clear()
    spec = standin(label="moved", workdir=str(tmp_path))
    (tmp_path / "t.py").write_text("changed = True\n")
    process = run_supervisor(spec)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2 and "the code changed after the experiment was made" in out
    assert not RunPaths.of(spec.folder_name, spec.label).metrics_csv.exists()


def test_a_node_that_dies_kills_the_command_and_the_next_start_replays_from_its_checkpoint():
    spec = standin(label="orphan", steps=300, step_s=0.03)
    paths = RunPaths.of(spec.folder_name, spec.label)
    process = run_supervisor(spec, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (paths.metrics_csv.exists() and len(csv_rows(spec)) >= 4
               and int(csv_rows(spec)[-1]["optimizer_step"]) % 10):  # logged past its last checkpoint
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-f", str(STANDIN)], capture_output=True, text=True).stdout.split()
    assert children
    process.kill()  # SIGKILL: no handler runs, as when the node dies
    process.wait()
    time.sleep(1)
    assert not [pid for pid in children if Path(f"/proc/{pid}/cmdline").exists()
                and "standin_trainer" in Path(f"/proc/{pid}/cmdline").read_text()]
    logged_before = int(csv_rows(spec)[-1]["optimizer_step"])
    assert status_of(spec)["state"] == "running"  # nobody could say otherwise

    process = run_supervisor(spec)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    resumed_at = int(paths.log_dir.joinpath("command.log").read_text().split("resuming from step ")[1].split()[0])
    assert resumed_at < logged_before  # steps after the checkpoint were logged twice ...
    steps = [int(r["optimizer_step"]) for r in csv_rows(spec)]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # ... and appear once


def test_under_torchrun_the_ranks_get_the_signal_and_the_supervisor_waits_for_their_checkpoint():
    """torchrun starts each rank in a session of its own and dies of SIGUSR2 (it has no handler):
    the signal must reach the ranks themselves, and the run may end only when they have."""
    spec = standin(label="torchrun", steps=300, step_s=0.03, gpus=2).replace(
        command=f"{{python}} -m torch.distributed.run --standalone --nproc_per_node={{gpus}} {STANDIN} "
                f"config={{config_path}}",
        config={**standin().config, "checkpoint_s": 2.0})
    paths = RunPaths.of(spec.folder_name, spec.label)
    process = run_supervisor(spec, start_new_session=True)
    deadline = time.monotonic() + 90
    while not (paths.metrics_csv.exists() and len(csv_rows(spec)) >= 3):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()[0]
        time.sleep(0.1)
    process.send_signal(signal.SIGUSR2)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_REQUEUE, out
    log = paths.log_dir.joinpath("command.log").read_text()
    assert "rank 0 preempted by USR2" in log and "rank 1 preempted by USR2" in log  # after torchrun died
    assert not subprocess.run(["pgrep", "-f", f"{STANDIN} config={paths.run_dir.resolve()}"]).returncode == 0
    stopped_at = status_of(spec)["optimizer_step"]
    checkpoint = json.loads(paths.run_dir.joinpath("checkpoint.json").read_text())["step"]
    assert checkpoint >= stopped_at  # the checkpoint was written before the supervisor decided

    process = run_supervisor(spec)
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 0, out
    steps = [int(r["optimizer_step"]) for r in csv_rows(spec)]
    assert steps == sorted(set(steps)) and steps[-1] == 300
    assert int(csv_rows(spec)[-1]["tokens_processed"]) == 300 * 4 * 64 * 2  # both ranks' tokens


def test_status_says_so_while_a_command_runs_without_writing_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_NO_METRICS_WARN_S", "1")
    study = tmp_path / "silent_study.py"
    study.write_text(f"from workloads.command import command_experim\n"
                     f"SILENT = command_experim('sleep 30', label='silent', steps=10, partition='local')\n")

    def orchestrate(*args):
        out = subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(study), *args],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    orchestrate("submit", "SILENT", "--backend", "local")
    try:
        deadline = time.monotonic() + 60
        while True:
            row = json.loads(orchestrate("status", "SILENT", "--json"))["SILENT"][0]
            if "no metrics in" in row["reason"]:
                break
            assert time.monotonic() < deadline, row
            time.sleep(0.5)
        assert row["state"] == "running" and "metrics.jsonl after 1 s" in row["reason"]
    finally:
        orchestrate("cancel", "SILENT", "-y")


def test_the_labs_lingua_yaml_runs_as_a_command_with_lingua_s_n_and_tokens(tmp_path):
    import yaml

    from orchestrator.lingua import lingua_command_experim, lingua_param_count
    from workloads.command.run import placeholder_values, write_config

    spec = lingua_command_experim(REPO / "tests" / "fixtures" / "lingua_run.yaml", workdir=str(tmp_path),
                                  label="bytes_27m", gpus=8, partition="miso")[0]
    assert spec.command == "torchrun --nproc_per_node={gpus} --standalone -m apps.main.train config={config_path}"
    assert (spec.params, spec.embedding_params) == (27_535_872, 2 * 258 * 512)  # lingua's own count, untied
    assert (spec.steps, spec.tokens_per_step, spec.metrics_format) == (500, 8 * 2048 * 8, "lingua")
    assert lingua_param_count(512, 8, 8, n_kv_heads=2) == (27_535_872 - 8 * 2 * 512 * (512 - 128), 2 * 258 * 512)
    paths = RunPaths.of(spec.folder_name, spec.label)
    values = placeholder_values(spec, paths, tmp_path)
    write_config(spec, values["config_path"], values)
    written = yaml.safe_load(values["config_path"].read_text())
    assert written["dump_dir"] == str(paths.run_dir.resolve()) and written["name"] == "bytes_27m"
    assert written["model"]["dim"] == 512 and written["data"]["sources"] == {"fineweb_edu_10bt_shuffled": 100.0}
    with pytest.raises(UsageError, match="lingua config needs steps"):
        lingua_command_experim({"model": {"dim": 512}}, workdir=str(tmp_path), label="x")
