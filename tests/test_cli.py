"""The CLI: list and show output, JSON, exit status 2 with one line for bad input, fast start."""

import json
import os
import subprocess
import sys

import pytest


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_list_shows_every_registry_with_counts_and_flops():
    result = cli("list")
    assert result.returncode == 0, result.stderr
    for name in ("TRANSFORMER_SCALING", "QUICKSTART", "LSTM_SCALING"):
        assert name in result.stdout
    rows = {r["registry"]: r for r in json.loads(cli("list", "--json").stdout)}
    from orchestrator.registry import load_registry

    assert rows["QUICKSTART"]["experiments"] == len(load_registry("QUICKSTART"))
    assert rows["TRANSFORMER_SCALING"]["total_flops"] > rows["QUICKSTART"]["total_flops"] > 0


def test_show_prints_the_table():
    result = cli("show", "TRANSFORMER_SCALING")
    assert result.returncode == 0, result.stderr
    for text in ("scaling_64d_5tpp", "scaling_1024d_80tpp", "batch x accum", "time sphinx", "time miso", "MFU"):
        assert text in result.stdout


def test_show_json_has_plans_and_estimates():
    data = json.loads(cli("show", "LSTM_SCALING", "--json", "--mfu", "0.5").stdout)
    assert data["mfu"] == 0.5 and len(data["experiments"]) == 12
    row = data["experiments"][0]
    assert row["gpus"] == 2 and row["plan"]["data_parallel"] == 2
    assert row["plan"]["batch_size"] * row["plan"]["grad_accum"] * 2 == 128
    assert row["flops"] == 6 * row["total_params"] * row["tokens"]
    assert row["estimated_wall_s"]["miso"] < row["estimated_wall_s"]["sphinx"]


NO_FIT_REGISTRY = """
from experiments import gen_experim
MIXED = gen_experim(64, label="small") + gen_experim(8192, label="huge", partition="sphinx")
"""
NO_FIT_ERROR = "error: transformer/huge does not fit on partition 'sphinx' even at batch 1"


def test_show_exits_2_after_the_table_when_an_experiment_does_not_fit_its_gpu(tmp_path):
    module = tmp_path / "mixed.py"
    module.write_text(NO_FIT_REGISTRY)
    result = cli("--registry-module", str(module), "show", "MIXED")
    assert result.returncode == 2
    assert "no fit" in result.stdout and "small" in result.stdout and "128 x 1" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(NO_FIT_ERROR)


def test_show_json_still_prints_everything_and_exits_2_when_an_experiment_does_not_fit(tmp_path):
    module = tmp_path / "mixed.py"
    module.write_text(NO_FIT_REGISTRY)
    result = cli("--registry-module", str(module), "show", "MIXED", "--json")
    assert result.returncode == 2
    plans = {row["label"]: row["plan"] for row in json.loads(result.stdout)["experiments"]}
    assert plans["small"]["batch_size"] == 128 and "even at batch 1" in plans["huge"]["error"]
    assert result.stderr.strip() == f"error: {plans['huge']['error']}"


@pytest.mark.parametrize("args, message", [
    (["show", "TRANSFORMER_SCALNG"], "unknown registry 'TRANSFORMER_SCALNG' (did you mean 'TRANSFORMER_SCALING'?)"),
    (["show", "QUICKSTART", "--mfu", "0"], "--mfu must be in (0, 1]"),
    (["show", "QUICKSTART", "--mfu", "abc"], "invalid float value: 'abc'"),
    (["--registry-module", "no/such/file.py", "list"], "'no/such/file.py' does not exist"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["show"], "the following arguments are required: registry"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_status_2(args, message):
    result = cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_registry_with_a_typo_in_a_user_module_fails_cleanly(tmp_path):
    module = tmp_path / "typo.py"
    module.write_text("from experiments import gen_experim\nBROKEN = gen_experim(64, label='x', learnig_rate=1)\n")
    result = cli("--registry-module", str(module), "show", "BROKEN")
    assert result.returncode == 2
    assert "unknown experiment field 'learnig_rate' (did you mean 'learning_rate'?)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_user_profile_overrides_a_shipped_partition(isolated_environment):
    profiles = isolated_environment / "config" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "sphinx.yaml").write_text("account: my_lab\ngpu_mem_gb: 40\n")
    data = json.loads(cli("show", "TRANSFORMER_SCALING", "--json").stdout)
    assert {row["plan"]["gpu_mem_gb"] for row in data["experiments"] if "error" not in row["plan"]} == {40}
    (profiles / "sphinx.yaml").write_text("acount: my_lab\n")
    result = cli("list")
    assert result.returncode == 2 and "'acount'" in result.stderr and "did you mean 'account'" in result.stderr


@pytest.mark.parametrize("verb", [["list"], ["show", "TRANSFORMER_SCALING"], ["status"],
                                  ["submit", "QUICKSTART", "--dry-run", "--backend", "local"]])
def test_the_cli_imports_no_heavy_module(verb):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator", *verb],
                            capture_output=True, text=True)
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert not imported & {"torch", "pandas", "scipy", "matplotlib", "datasets", "numpy"}


def test_a_scheduler_that_does_not_answer_is_one_line_not_a_traceback(tmp_path):
    from orchestrator import manifest
    from orchestrator.registry import load_registry

    spec = load_registry("QUICKSTART")[0]
    record = manifest.ArrayRecord(name="x", backend="slurm", resources={}, parallel=1, log_folder="", job_id="42",
                                  tasks=[manifest.TaskRecord(0, spec.identity, spec.label, spec.folder_name, "s")])
    submission = manifest.new_submission("QUICKSTART", [record])
    submission.state = "submitted"
    submission.save()
    no_slurm = tmp_path / "bin"
    no_slurm.mkdir()
    result = cli("status", "QUICKSTART", env={"PATH": str(no_slurm)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: squeue not found: is Slurm installed on this machine?"



@pytest.mark.parametrize("verb", [["status"], ["cancel", "-y"], ["retry"]])
def test_a_selector_in_the_wrong_case_suggests_the_registry(verb):
    result = cli(*verb, "quickstart")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: 'quickstart' is not a registry, a submitted job id, or a label pattern")
    assert "(did you mean 'QUICKSTART'?)" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def submit_record(registry, specs):
    from orchestrator import manifest

    tasks = [manifest.TaskRecord(i, s.identity, s.label, s.folder_name, "s") for i, s in enumerate(specs)]
    record = manifest.ArrayRecord(name="x", backend="local", resources={}, parallel=1, log_folder="", job_id="42",
                                  tasks=tasks)
    submission = manifest.new_submission(registry, [record])
    submission.state = "submitted"
    submission.save()


@pytest.mark.parametrize("selector, meant", [("QS_16D_*", "qs_16d_2800k"), ("qs_32d_35k", "qs_32d_350k"),
                                             ("qs_48d_350k_*", "qs_48d_350k"),
                                             ("Quickstart/qs_32d_*", "quickstart/qs_32d_2800k")])
def test_a_label_that_matches_nothing_suggests_a_submitted_label(selector, meant):
    from orchestrator.errors import UsageError
    from orchestrator.registry import load_registry
    from orchestrator.selector import select

    submit_record("QUICKSTART", load_registry("QUICKSTART"))
    with pytest.raises(UsageError, match=rf"\(did you mean '{meant}'\?\)"):
        select(selector)


def test_a_job_id_that_matches_nothing_gets_no_suggestion():
    from orchestrator.errors import UsageError
    from orchestrator.selector import select

    submit_record("QUICKSTART", [])
    with pytest.raises(UsageError) as error:
        select("4242")
    assert "did you mean" not in str(error.value) and "submitted yet" not in str(error.value)


def test_a_label_glob_before_any_submission_says_nothing_was_submitted():
    from orchestrator.errors import UsageError
    from orchestrator.selector import select

    with pytest.raises(UsageError, match=r"'qs_\*' is not .* \(nothing has been submitted yet\); registries: "):
        select("qs_*")

def test_the_readme_commands_table_is_one_table_with_every_verb():
    from pathlib import Path

    from orchestrator.cli import COMMANDS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Commands\n", 1)[1].split("\n## ", 1)[0].strip()
    table = section.split("\n\n", 1)[0].splitlines()  # a blank line would end the table there
    assert table[:2] == ["| command | what it does |", "| --- | --- |"]
    assert all(row.startswith("| `python -m orchestrator ") and row.replace("\\|", "").count("|") == 3
               for row in table[2:])
    assert {row.split()[4].rstrip("`") for row in table[2:]} == set(COMMANDS)


@pytest.mark.parametrize("submitted, arrays, failed, expected", [
    (1, 1, 1, ["R: submitted 1 experiment in 1 array [7 (1 task)] on the local backend",
               "1 failed, timed-out, cancelled or diverged experiment was not resubmitted"]),
    (2, 2, 3, ["R: submitted 2 experiments in 2 arrays [7 (1 task), 8 (1 task)] on the local backend",
               "3 failed, timed-out, cancelled or diverged experiments were not resubmitted"]),
])
def test_the_submit_report_says_one_experiment_and_many_experiments(capsys, submitted, arrays, failed, expected):
    from types import SimpleNamespace

    from orchestrator.commands import submit

    counts = {"submit": submitted, "failed": failed}
    plan = SimpleNamespace(registry="R", backend="local", arrays=[None] * arrays,
                           count=lambda action: counts.get(action, 0))
    done = SimpleNamespace(arrays=[SimpleNamespace(job_id=str(7 + i), tasks=[None], resources={}, parallel=1)
                                   for i in range(arrays)])
    submit.report(SimpleNamespace(json=False, dry_run=False), plan, done, [], "requested")
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, out
