"""Choosing a backend and handing it the code snapshot, with fake Slurm tools on PATH."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import snapshot
from orchestrator.backends import code_environment, code_setup, make_executor, ping_controller, resolve_backend
from orchestrator.profiles import get_profile
from orchestrator.scheduler import SchedulerError

UP = 'echo "Slurmctld(primary) at localhost is UP"'
DOWN_EXIT_1 = ('echo "slurm_load_ctl_conf error: Unable to contact slurm controller (connect failure)" >&2\n'
               'echo "Slurmctld(primary) at localhost is DOWN"\nexit 1')
DOWN_EXIT_0 = 'echo "Slurmctld(primary) at localhost is DOWN"'


def fake_slurm(tmp_path, monkeypatch, scontrol: str | None, sbatch: bool = True) -> Path:
    """A PATH holding only fake tools; ``scontrol`` notes every call in ``calls``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {"sbatch": "exit 0"} if sbatch else {}
    if scontrol is not None:
        tools["scontrol"] = f'echo "$@" >> {tmp_path / "calls"}\n{scontrol}'
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return tmp_path / "calls"


def test_auto_picks_slurm_when_the_controller_answers(tmp_path, monkeypatch):
    calls = fake_slurm(tmp_path, monkeypatch, UP)
    assert resolve_backend("auto", {"sphinx"})[0] == "slurm"
    assert calls.read_text() == "ping\n"


@pytest.mark.parametrize("scontrol", [DOWN_EXIT_1, DOWN_EXIT_0, "exit 1"])
def test_auto_runs_locally_when_sbatch_has_no_controller_behind_it(tmp_path, monkeypatch, scontrol):
    fake_slurm(tmp_path, monkeypatch, scontrol)
    backend, why = resolve_backend("auto", {"sphinx"})
    assert backend == "local"
    assert why == "auto: sbatch found but no Slurm controller answers (scontrol ping); running on this machine"


def test_auto_runs_locally_without_sbatch(tmp_path, monkeypatch):
    calls = fake_slurm(tmp_path, monkeypatch, UP, sbatch=False)
    assert resolve_backend("auto", {"sphinx"}) == ("local", "auto: no sbatch on PATH")
    assert not calls.exists()


def test_local_partitions_never_ask_the_controller(tmp_path, monkeypatch):
    calls = fake_slurm(tmp_path, monkeypatch, UP)
    assert resolve_backend("auto", {"local"}) == ("local", "auto: only local partitions")
    assert not calls.exists()


def test_explicit_slurm_with_a_controller_is_used(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, UP)
    assert resolve_backend("slurm", {"sphinx"}) == ("slurm", "requested")


def test_explicit_slurm_without_a_controller_is_an_error_with_scontrols_words(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, DOWN_EXIT_1)
    with pytest.raises(SchedulerError, match="Slurmctld\\(primary\\) at localhost is DOWN"):
        resolve_backend("slurm", {"sphinx"})


def test_explicit_slurm_without_a_controller_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    fake_slurm(tmp_path, monkeypatch, DOWN_EXIT_1)
    assert main(["submit", "TRANSFORMER_SCALING", "--backend", "slurm"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no Slurm controller answers: scontrol ping:") and err.count("\n") == 1


def test_a_slurm_dry_run_on_a_laptop_prints_the_sbatch_flags(tmp_path, monkeypatch, capsys):
    import json

    from orchestrator.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm at all
    assert main(["submit", "TRANSFORMER_SCALING", "--backend", "slurm", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "slurm" and out["counts"]["submit"] == 25
    assert "--partition=sphinx" in out["arrays"][0]["sbatch"] and "--signal=USR2@90" in out["arrays"][0]["sbatch"]


def test_a_gpu_registry_run_locally_says_so(tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main

    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["submit", "TRANSFORMER_SCALING", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: TRANSFORMER_SCALING is written for sphinx, and runs on this machine's CPU")


def test_a_controller_that_hangs_counts_as_not_answering(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, f"exec {shutil.which('sleep')} 10")
    with pytest.raises(SchedulerError, match="took over 1 s"):
        ping_controller(timeout_s=1)


def test_without_scontrol_there_is_no_controller(tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch, None)
    with pytest.raises(SchedulerError, match="scontrol not found"):
        ping_controller()
    assert resolve_backend("auto", {"sphinx"})[0] == "local"


@pytest.mark.parametrize("current", [None, "", "/site/a:/site/b"])
def test_sbatch_setup_lines_build_the_same_pythonpath_as_the_local_backend(tmp_path, current):
    code = tmp_path / "code snapshots" / "it's here"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if current is not None:
        env["PYTHONPATH"] = current
    script = "\n".join(code_setup(code) + ['printf "%s|%s" "$PYTHONPATH" "$PYTHONSAFEPATH"'])
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out == f"{snapshot.pythonpath(code, current)}|1"


def test_code_environment_is_restored_afterwards(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/site/a")
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    with code_environment(Path("/code")):
        assert os.environ["PYTHONPATH"] == "/code:/site/a" and os.environ["PYTHONSAFEPATH"] == "1"
    assert os.environ["PYTHONPATH"] == "/site/a" and "PYTHONSAFEPATH" not in os.environ
    with code_environment(None):
        assert os.environ["PYTHONPATH"] == "/site/a" and "PYTHONSAFEPATH" not in os.environ


def test_slurm_executor_writes_hold_and_the_snapshot_into_its_script(tmp_path, monkeypatch):
    # submitit's SlurmExecutor looks for srun when it is made; a machine whose Slurm the
    # cluster fixture has not installed yet has none, and this test only reads the script text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    resources = dict(partition="sphinx", gpus=1, time_min=5, mem_gb=4, cpus_per_gpu=1)
    executor = make_executor("slurm", str(tmp_path), get_profile("sphinx"), resources, 2, "x", 3,
                             code_dir=Path("/code"))
    text = executor._make_submission_file_text("<command>", "uid")
    assert "#SBATCH --hold" in text.splitlines()
    assert "export PYTHONPATH=/code${PYTHONPATH:+:$PYTHONPATH}" in text.splitlines()


def test_a_local_executor_takes_the_snapshot_from_the_environment_only(tmp_path):
    resources = dict(partition="local", gpus=1, time_min=5, mem_gb=4, cpus_per_gpu=1)
    with pytest.raises(ValueError, match="code_environment"):
        make_executor("local", str(tmp_path), get_profile("local"), resources, 1, "x", 0, code_dir=Path("/code"))


def test_a_local_job_and_the_processes_it_starts_import_from_the_snapshot(tmp_path, monkeypatch):
    code = snapshot.take(tmp_path / "code")
    monkeypatch.chdir(snapshot.project_root())  # submitted from the checkout, as usual
    resources = dict(partition="local", gpus=1, time_min=5, mem_gb=4, cpus_per_gpu=1)
    executor = make_executor("local", str(tmp_path / "logs"), get_profile("local"), resources, 1, "x", 0)
    child = [sys.executable, "-c", "import orchestrator; print(orchestrator.__file__)"]
    with code_environment(code):
        job = executor.submit(subprocess.check_output, child, text=True)  # like task._start's trainers
    assert Path(job.result().strip()) == code / "orchestrator" / "__init__.py"
