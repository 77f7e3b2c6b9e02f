"""``python -m orchestrator analyze``: tables, report.json and plots; one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from analysis.chinchilla import ChinchillaLaw
from analysis.synthetic import grid_design, write_run, write_study
from orchestrator.cli import main
from orchestrator.paths import RunPaths, results_root

PAPER = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
PLOTS = {"loss_vs_flops.png", "isoflop.png", "fit_vs_observed.png", "compute_optimal.png"}


@pytest.fixture
def folder(tmp_path):
    pairs = grid_design(np.geomspace(1e8, 1e10, 5), np.geomspace(2e9, 2e11, 5))
    write_study(tmp_path, "grid", PAPER, pairs, noise=0.005, steps=30)
    return tmp_path / "grid"


def test_analyze_a_folder_prints_the_law_and_writes_report_and_plots(folder, capsys):
    assert main(["analyze", str(folder), "--budget", "1e21", "1e23", "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    for text in ("25 runs used", "L(N, D) = E + A / N^alpha + B / D^beta", "95% interval", "alpha",
                 "1.00e+21", "1.00e+23", "tokens/param", "residual RMS in log loss", "Approach 2: IsoFLOP",
                 "L(C) on the training-curve envelope", str(folder / "analysis" / "report.json")):
        assert text in out, text
    written = {p.name for p in (folder / "analysis").iterdir()}
    assert written == PLOTS | {"report.json"}
    report = json.loads((folder / "analysis" / "report.json").read_text())
    assert report["settings"]["budgets"] == [1e21, 1e23]
    assert report["settings"]["bootstrap"] == 20
    assert len(report["data"]["runs"]) == 25
    alpha = report["approach3"]["parameters"]["alpha"]
    assert alpha["low"] <= alpha["value"] <= alpha["high"] and abs(alpha["value"] - 0.34) < 0.05
    assert [row["C"] for row in report["approach3"]["predictions"]] == [1e21, 1e23]


def test_json_output_is_the_report_plus_the_files(folder, tmp_path, capsys):
    out_dir = tmp_path / "elsewhere"
    assert main(["analyze", str(folder), "--bootstrap", "0", "--json", "--out", str(out_dir)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {f.rsplit("/", 1)[1] for f in data["files"]} == PLOTS | {"report.json"}
    assert all(f.startswith(str(out_dir)) for f in data["files"])
    top = max(run["C"] for run in data["data"]["runs"])
    assert data["settings"]["budgets"] == [top, 10 * top, 100 * top]
    assert data["approach3"]["parameters"]["E"]["low"] is None  # no bootstrap: no interval


def test_json_output_holds_the_new_checks_and_no_nan(folder, capsys):
    def no_nan(constant):
        raise AssertionError(f"{constant} in the JSON")

    assert main(["analyze", str(folder), "--bootstrap", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    checks = data["checks"]
    assert checks["accounting"]["parameter_counts"]["differ"]  # the synthetic trainer's 90%
    assert checks["accounting"]["read_early"] == [] and checks["accounting"]["warmup"] is None
    assert checks["extrapolation"]["holdout"]["reason"] is None
    assert [p["extrapolated"] for p in data["approach3"]["predictions"]] == [False, False, True]
    json.loads((folder / "analysis" / "report.json").read_text(), parse_constant=no_nan)


def test_a_loss_read_before_the_schedule_ends_is_warned(folder, capsys):
    paths = RunPaths.of("grid", sorted(p.stem for p in folder.glob("*.csv"))[0], folder.parent)
    paths.status_json.write_text(json.dumps({"state": "failed", "optimizer_step": 20}))
    paths.metrics_csv.write_text("\n".join(paths.metrics_csv.read_text().splitlines()[:21]) + "\n")
    assert main(["analyze", str(folder), "--bootstrap", "0", "--include-incomplete"]) == 0
    out = capsys.readouterr().out
    assert f"warning: final loss read before the schedule ends in 1 run: grid/{paths.label} at step 20 of 30" in out


def test_a_registry_reads_only_its_own_runs_and_writes_under_results_analysis(capsys):
    from orchestrator.registry import load_registry

    law = ChinchillaLaw(E=1.5, A=30.0, B=60.0, alpha=0.3, beta=0.3)
    rng = np.random.default_rng(0)
    specs = load_registry("QUICKSTART")
    for spec in specs:
        write_run(RunPaths.of(spec.folder_name, spec.label), spec.total_params, spec.tokens, law, rng,
                  noise=0.002, steps=10)
    write_run(RunPaths.of(specs[0].folder_name, "stray"), 1e5, 1e6, law, rng)  # not in the registry
    assert main(["analyze", "QUICKSTART", "--bootstrap", "10"]) == 0
    out = capsys.readouterr().out
    assert f"{len(specs)} runs used" in out
    report = json.loads((results_root() / "analysis" / "QUICKSTART" / "report.json").read_text())
    assert "stray" not in {run["run"].split("/")[1] for run in report["data"]["runs"]}


def test_runs_that_are_not_usable_are_listed(folder, capsys):
    paths = RunPaths.of("grid", sorted(p.stem for p in folder.glob("*.csv"))[0], folder.parent)
    paths.status_json.write_text(json.dumps({"state": "diverged", "optimizer_step": 4}))
    broken = RunPaths.of("grid", sorted(p.stem for p in folder.glob("*.csv"))[1], folder.parent)
    broken.metrics_csv.write_text(broken.metrics_csv.read_text()[:-9])
    assert main(["analyze", str(folder), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "23 runs used" in out
    assert f"excluded grid/{paths.label}: diverged at step 4" in out
    assert f"problem {broken.metrics_csv}: truncated" in out


def test_the_summary_counts_problems_in_words_and_lists_each(folder, capsys):
    labels = sorted(p.stem for p in folder.glob("*.csv"))
    first, second = (RunPaths.of("grid", label, folder.parent).metrics_csv for label in labels[:2])
    first.write_text(first.read_text()[:-9])
    assert main(["analyze", str(folder), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "1 with a problem" in out and f"problem {first}: truncated" in out
    second.write_text(second.read_text()[:-9])
    assert main(["analyze", str(folder), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "2 with problems" in out and f"problem {first}" in out and f"problem {second}" in out


def test_the_target_may_follow_the_budgets(folder, capsys):
    assert main(["analyze", "--budget", "1e21", "1e22", str(folder), "--bootstrap", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["budgets"] == [1e21, 1e22]
    assert main(["analyze", "--budget", "1e21", str(folder), "--budget", "1e23", "--bootstrap", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["budgets"] == [1e21, 1e23]
    assert main(["analyze", "--budget", "1e15", "QUICKSTART"]) == 2  # parsed: it only has no runs yet
    assert "no usable runs in registry QUICKSTART" in capsys.readouterr().err


@pytest.mark.parametrize("args", [[], ["--budget", "1e21"]])
def test_analyze_without_a_target_says_what_it_needs(capsys, args):
    assert main(["analyze", *args]) == 2
    assert capsys.readouterr().err.strip() == "error: analyze needs a REGISTRY or FOLDER"


def test_a_file_is_not_a_results_folder(folder, capsys):
    csv = sorted(folder.glob("*.csv"))[0]
    assert main(["analyze", str(csv)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {csv} is a file; analyze reads a results folder, e.g. {folder}")


def test_a_design_without_separate_n_and_d_says_why_approach_3_was_not_fitted(tmp_path, capsys):
    write_study(tmp_path, "tpp", PAPER, [(n, 20 * n) for n in np.geomspace(1e7, 1e10, 12)], noise=0.0)
    assert main(["analyze", str(tmp_path / "tpp"), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "Approach 3 (L(N, D)) not fitted" in out and "tokens-per-parameter" in out
    assert "L(C) on the training-curve envelope" in out


@pytest.mark.parametrize("args, message", [
    (["--budget", "lots"], "--budget must be a positive number of FLOPs such as 1e21, got 'lots'"),
    (["--budget", "1e21", "0"], "--budget must be a positive number of FLOPs such as 1e21, got '0'"),
    (["--budget=-1e15"], "--budget must be a positive number of FLOPs such as 1e21, got '-1e15'"),
    (["--budget", "-1e15"], "--budget must be a positive number of FLOPs such as 1e21, got '-1e15'"),
    (["--budget", "1e21", "-2.5e-3"], "--budget must be a positive number of FLOPs such as 1e21, got '-2.5e-3'"),
    (["--bootstrap", "-3"], "--bootstrap must be >= 0"),
])
def test_bad_options_are_one_line_and_exit_status_2(folder, capsys, args, message):
    assert main(["analyze", str(folder), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_folder_without_runs_or_an_unknown_registry_is_a_usage_error(tmp_path, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    assert f"no runs in {tmp_path}" in capsys.readouterr().err
    assert main(["analyze", "QUIKSTART"]) == 2
    assert "unknown registry 'QUIKSTART' (did you mean 'QUICKSTART'?)" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "typo")]) == 2
    assert f"no such results folder '{tmp_path / 'typo'}'" in capsys.readouterr().err


def test_a_study_with_nothing_finished_is_a_usage_error(tmp_path, capsys):
    write_study(tmp_path, "busy", PAPER, [(1e8, 1e10), (1e9, 1e10)], state="running")
    assert main(["analyze", str(tmp_path / "busy")]) == 2
    assert "no usable runs in" in capsys.readouterr().err


def test_the_command_module_imports_nothing_heavy():
    code = ("import sys, orchestrator.commands.analyze; "
            "print([m for m in ('pandas', 'numpy', 'scipy', 'matplotlib', 'torch') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_study_takes_its_registry_after_the_budgets_too():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "orchestrator", "study", "--budget", "1e15", "QUIKSTART"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: unknown registry 'QUIKSTART' (did you mean 'QUICKSTART'?); known: "
                                     + result.stderr.split("known: ")[1].strip())
