"""The loader: complete runs become one tidy table; incomplete, diverged and broken ones are named."""

import json
import time

import numpy as np
import pytest

from analysis.chinchilla import ChinchillaLaw
from analysis.loader import discover, load_folder, load_runs
from analysis.synthetic import grid_design, write_run, write_study
from orchestrator.paths import RunPaths

LAW = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


@pytest.fixture
def study(tmp_path):
    """Six complete runs in tmp_path/study."""
    paths = write_study(tmp_path, "study", LAW, grid_design([1e8, 3e8, 1e9], [2e9, 2e10]), steps=20)
    return tmp_path / "study", paths


def status(paths, state, step=20):
    paths.status_json.write_text(json.dumps({"state": state, "optimizer_step": step}))


def test_complete_runs_load_into_one_tidy_table_with_their_curves(study):
    folder, paths = study
    loaded = load_folder(folder)
    runs = loaded.runs
    assert len(runs) == 6 and loaded.excluded.empty and loaded.problems.empty
    assert set(runs["N"]) == {1e8, 3e8, 1e9}
    np.testing.assert_allclose(runs["C"], 6 * runs["N"] * runs["D"])
    assert (runs["N_non_embedding"] < runs["N"]).all()
    assert (runs["loss_source"] == "val").all()
    assert len(loaded.curves) == 6 * 20
    one = loaded.curves[loaded.curves["run"] == runs["run"].iloc[0]]
    assert one["optimizer_step"].tolist() == list(range(1, 21))
    np.testing.assert_allclose(one["flops"], 6 * runs["N"].iloc[0] * one["tokens"])
    # the final loss is the last validation loss, which follows the law within the noise
    np.testing.assert_allclose(runs["loss"], LAW.loss(runs["N"], runs["D"]), rtol=0.05)


def test_without_a_final_validation_loss_the_smoothed_training_loss_is_used(tmp_path):
    (paths,) = write_study(tmp_path, "s", LAW, [(1e8, 1e10)], steps=40, val_loss=False)
    runs = load_folder(tmp_path / "s").runs
    assert runs["loss_source"].tolist() == ["train_smoothed"]
    train = np.loadtxt(paths.metrics_csv, delimiter=",", skiprows=1, usecols=2)
    assert runs["loss"].iloc[0] == pytest.approx(train[-4:].mean())  # the last 10% of 40 steps


def test_running_and_failed_runs_are_listed_and_left_out_unless_asked(study):
    folder, paths = study
    status(paths[0], "running", 7)
    status(paths[1], "failed", 3)
    loaded = load_folder(folder)
    assert len(loaded.runs) == 4
    reasons = dict(zip(loaded.excluded["run"], loaded.excluded["reason"]))
    assert reasons == {f"study/{paths[0].label}": "running at step 7",
                       f"study/{paths[1].label}": "failed at step 3"}
    assert len(load_folder(folder, include_incomplete=True).runs) == 6


def test_diverged_runs_are_left_out_unless_asked(study):
    folder, paths = study
    status(paths[2], "diverged", 12)
    loaded = load_folder(folder)
    assert loaded.excluded["state"].tolist() == ["diverged"]
    assert paths[2].label not in set(loaded.runs["label"])
    assert len(load_folder(folder, include_diverged=True).runs) == 6


def test_a_nan_loss_in_the_csv_marks_the_run_diverged(study):
    folder, paths = study
    lines = paths[3].metrics_csv.read_text().splitlines()
    fields = lines[10].split(",")
    fields[2] = "nan"
    lines[10] = ",".join(fields)
    paths[3].metrics_csv.write_text("\n".join(lines) + "\n")
    loaded = load_folder(folder)
    assert loaded.excluded.to_dict(orient="records") == [
        {"run": f"study/{paths[3].label}", "state": "diverged", "reason": "non-finite training loss in the CSV"}]


def test_without_status_json_a_run_is_complete_only_if_it_reached_its_planned_steps(study):
    folder, paths = study
    paths[0].status_json.unlink()
    paths[1].status_json.unlink()
    lines = paths[1].metrics_csv.read_text().splitlines()
    paths[1].metrics_csv.write_text("\n".join(lines[:11]) + "\n")  # stopped at step 10 of 20
    loaded = load_folder(folder)
    assert paths[0].label in set(loaded.runs["label"])
    assert loaded.excluded["reason"].tolist() == ["no status.json; CSV ends at step 10 of 20"]
    with_partial = load_folder(folder, include_incomplete=True).runs.set_index("label")
    assert with_partial.loc[paths[1].label, "state"] == "incomplete"
    assert with_partial.loc[paths[1].label, "D"] == 10 * (2e10 / 20)  # tokens actually processed


def test_the_warmup_and_the_planned_and_logged_steps_reach_the_table(study):
    folder, paths = study
    config = json.loads(paths[0].config_json.read_text())
    config["spec"]["warmup_steps"] = 4
    paths[0].config_json.write_text(json.dumps(config))
    status(paths[1], "running", 10)
    paths[1].metrics_csv.write_text("\n".join(paths[1].metrics_csv.read_text().splitlines()[:11]) + "\n")
    runs = load_folder(folder, include_incomplete=True).runs.set_index("label")
    assert runs.loc[paths[0].label, "warmup_steps"] == 4 and runs["warmup_steps"].isna().sum() == 5
    assert (runs["optimizer_steps"] == 20).all()
    assert runs.loc[paths[1].label, "steps"] == 10 and runs.loc[paths[0].label, "steps"] == 20


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_text(p.read_text()[:-15]), "truncated: the last line is incomplete"),
    (lambda p: p.write_text("step,tokens\n1,2\n"), "missing columns optimizer_step, tokens_processed, loss"),
    (lambda p: p.write_text(p.read_text().replace(",1e-3,", ",oops,", 1).replace("\n2,", "\nabc,", 1)),
     "malformed CSV"),
    (lambda p: p.write_text(""), "empty file"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00garbage\n"), "unreadable CSV"),
    (lambda p: p.write_text(p.read_text().replace("\n5,", "\n3,", 1)), "optimizer_step does not increase"),
    (lambda p: p.write_text("\n".join(p.read_text().splitlines()[:8]) + "\n"),
     "ends at step 7 of 20 although the run completed"),
])
def test_malformed_csvs_are_reported_by_path_and_not_used(study, damage, problem):
    folder, paths = study
    damage(paths[4].metrics_csv)
    loaded = load_folder(folder)
    assert len(loaded.runs) == 5
    assert loaded.problems["path"].tolist() == [str(paths[4].metrics_csv)]
    assert problem in loaded.problems["problem"].iloc[0]


def test_a_missing_or_broken_config_is_a_problem_of_that_file(study):
    folder, paths = study
    paths[0].config_json.unlink()
    paths[1].config_json.write_text("{not json")
    loaded = load_folder(folder)
    assert len(loaded.runs) == 4
    problems = dict(zip(loaded.problems["path"], loaded.problems["problem"]))
    assert "missing" in problems[str(paths[0].config_json)]
    assert "unreadable JSON" in problems[str(paths[1].config_json)]


def test_a_run_that_has_not_started_is_excluded_not_a_problem(study):
    folder, paths = study
    ghost = RunPaths.of("study", "ghost", folder.parent)
    ghost.config_json.write_text(paths[0].config_json.read_text())
    loaded = load_folder(folder)
    assert len(loaded.runs) == 6 and loaded.problems.empty
    assert loaded.excluded.to_dict(orient="records") == [
        {"run": "study/ghost", "state": "not started", "reason": "no metrics CSV yet"}]


def test_discover_finds_runs_by_csv_or_config(study):
    folder, paths = study
    (folder / "analysis").mkdir()
    (folder / "analysis" / "report.json").write_text("{}")
    assert sorted(p.label for p in discover(folder)) == sorted(p.label for p in paths)


@pytest.mark.slow
def test_two_thousand_runs_load_in_seconds(tmp_path):
    rng = np.random.default_rng(0)
    sizes = np.geomspace(1e6, 1e9, 40)
    for i in range(2000):
        write_run(RunPaths.of("big", f"r{i}", tmp_path), sizes[i % 40], 1e8 * (1 + i % 50), LAW, rng, steps=200)
    start = time.perf_counter()
    loaded = load_runs(discover(tmp_path / "big"))
    elapsed = time.perf_counter() - start
    assert len(loaded.runs) == 2000 and len(loaded.curves) == 2000 * 200
    assert elapsed < 10, elapsed
