"""`attribution`: a GradDotProd run's examples ranked by their in-run value, with their text,
the value table, the plots and a curated dataset, from dot-product chunks written by hand with
known dots (so every value is exact)."""

import json
import os
import subprocess
import sys

import pytest

from analysis.attribution import snippet
from orchestrator.cli import main
from orchestrator.paths import RunPaths
from orchestrator.spec import make_spec
from workloads import dotlog
from workloads.data import TokenData, get_tokenizer

# (step, lr, val_loss, [(example, dot), ...]); an example's value is dotlog's: the sum of lr * dot
# over its samples, the first-order validation-loss reduction it is credited with
STEPS = [
    (1, 0.5, 5.0, [(10, -4.0), (20, 2.0), (30, 0.0), (40, 1.0)]),
    (2, 0.5, 4.5, [(10, -2.0), (50, 6.0), (60, -1.0), (70, 0.5)]),
    (3, 0.25, 4.0, [(80, 8.0), (20, -4.0), (90, 1.0), (100, -1.0)]),
    (4, 0.25, 3.5, [(110, 0.0), (120, 2.0), (10, 4.0), (130, 3.0)]),
]
VALUES = {10: -2.0, 20: 0.0, 30: 0.0, 40: 0.5, 50: 3.0, 60: -0.5, 70: 0.25, 80: 2.0, 90: 0.25,
          100: -0.25, 110: 0.0, 120: 0.5, 130: 0.75}
TOP3, BOTTOM3 = [50, 80, 130], [10, 60, 100]  # highest first; lowest first
PLOTS = ("value_hist.png", "value_vs_times_seen.png", "steps.png")


def graddot_spec(label="r"):
    return make_spec("transformer", label=label, hidden_dim=32, seq_length=32, dataset="shakespeare",
                     method="graddotprod", val_batch_size=2, attribution_dataset="shakespeare", partition="local")


def rows_of(steps, keep=lambda position: True):
    rows = {name: [] for name in dotlog.COLUMNS}
    for step, lr, val_loss, samples in steps:
        for position, (example, dot) in enumerate(samples):
            if not keep(position):
                continue
            for name, value in (("step", step), ("sample", (step - 1) * 4 + position), ("example", example),
                                ("dot", dot), ("loss", 3.0), ("lr", lr), ("val_loss", val_loss),
                                ("val_grad_sq_norm", 1.0)):
                rows[name].append(value)
    return rows


def write_run(results, spec, steps=STEPS) -> RunPaths:
    """A run directory as a two-rank graddotprod run leaves it: spec.json and chunks (steps 1-2
    from rank 0 alone, steps 3-4 split between ranks 0 and 1)."""
    paths = RunPaths.of(spec.folder_name, spec.label, results)
    paths.run_dir.mkdir(parents=True)
    paths.spec_json.write_text(json.dumps({"spec": spec.to_dict()}))
    rows = rows_of(steps[:2])
    dotlog.write_chunk(paths.grad_dotprods_dir, 0, {**rows, "rank": [0] * len(rows["step"])})
    for rank in (0, 1):
        rows = rows_of(steps[2:], keep=lambda position: position % 2 == rank)
        dotlog.write_chunk(paths.grad_dotprods_dir, rank, {**rows, "rank": [rank] * len(rows["step"])})
    return paths


@pytest.fixture
def results(tmp_path, data_cache, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("ORCHESTRATOR_DATA_CACHE", str(data_cache))  # one tokenising per test session
    return tmp_path / "results"


@pytest.fixture
def run(results):
    return write_run(results, graddot_spec())


def decoded(example_ids, spec=None):
    spec = spec or graddot_spec()
    tokenizer = get_tokenizer(spec)
    return [tokenizer.decode(window) for window in TokenData.for_spec(spec).examples(example_ids)]


def table_ids(stdout, title):
    """The example ids of the table under ``title``, in printed order."""
    lines = stdout.split(title, 1)[1].splitlines()[3:]  # title rest, header, rule
    ids = []
    for line in lines:
        cells = line.split()
        if len(cells) < 3 or not (cells[0].isdigit() and cells[1].isdigit()):
            break
        ids.append(int(cells[1]))
    return ids


def test_prints_counts_and_the_highest_and_lowest_examples_with_their_text(run, capsys):
    assert main(["attribution", str(run.run_dir), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "transformer/r: 4 steps logged (1..4), 16 samples, 13 distinct examples" in out
    assert "validation loss 5.0000 at step 1, 3.5000 at step 4" in out
    assert table_ids(out, "of highest value") == TOP3
    assert table_ids(out, "of lowest value") == BOTTOM3
    for example, text in zip(TOP3 + BOTTOM3, decoded(TOP3 + BOTTOM3)):
        assert snippet(text) in out, example
    line = next(line for line in out.splitlines() if line.split()[:2] == ["13", "10"])
    assert line.split()[2:5] == ["-2", "3", "-0.6667"]  # value, times seen, mean dot


def test_snippet_is_one_line_of_at_most_70_characters():
    assert snippet("to be\nor\tnot\x00") == "to be⏎or not\ufffd"
    long = snippet("x" * 200)
    assert len(long) == 70 and long.endswith("…")


def test_writes_the_value_table_with_exact_values(run, capsys):
    assert main(["attribution", str(run.run_dir)]) == 0
    table = dotlog.read_values(run.grad_dotprods_dir)
    assert dict(zip(table["example"].tolist(), table["value"].tolist())) == VALUES
    assert table["times_seen"][0] == 3  # example 10, the lowest


def test_rewrites_the_value_table_only_when_a_chunk_is_newer(run, capsys):
    assert main(["attribution", str(run.run_dir)]) == 0
    values = run.grad_dotprods_dir / dotlog.VALUES_CSV
    written = values.stat().st_mtime_ns
    os.utime(values, ns=(written + 10 ** 9, written + 10 ** 9))
    assert main(["attribution", str(run.run_dir)]) == 0
    assert values.stat().st_mtime_ns == written + 10 ** 9  # fresh: left alone

    later = rows_of([(5, 1.0, 3.0, [(140, 7.0)])])
    chunk = dotlog.write_chunk(run.grad_dotprods_dir, 0, {**later, "rank": [0]})
    os.utime(chunk, ns=(written + 2 * 10 ** 9, written + 2 * 10 ** 9))
    assert main(["attribution", str(run.run_dir)]) == 0
    table = dotlog.read_values(run.grad_dotprods_dir)
    assert table["example"][-1] == 140 and table["value"][-1] == 7.0  # the new highest


def test_draws_the_plots_in_the_run_or_in_out(run, tmp_path, capsys):
    assert main(["attribution", str(run.run_dir)]) == 0
    for name in PLOTS:
        assert (run.grad_dotprods_dir / "plots" / name).stat().st_size > 0
    capsys.readouterr()
    assert main(["attribution", str(run.run_dir), "--out", str(tmp_path / "pictures"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"][0]["plots"] == [str(tmp_path / "pictures" / name) for name in PLOTS]
    assert all((tmp_path / "pictures" / name).is_file() for name in PLOTS)


def test_json_report_holds_counts_and_both_ends_with_the_whole_text(run, capsys):
    assert main(["attribution", str(run.run_dir), "--top", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["runs"][0]
    counts = (report["run"], report["steps_logged"], report["samples"], report["examples"])
    assert counts == ("transformer/r", 4, 16, 13)
    assert (report["val_loss_first"], report["val_loss_last"]) == (5.0, 3.5)
    assert [e["example"] for e in report["top"]] == TOP3 and [e["rank"] for e in report["top"]] == [1, 2, 3]
    assert [e["example"] for e in report["bottom"]] == BOTTOM3 and [e["rank"] for e in report["bottom"]] == [13, 12, 11]
    assert [e["value"] for e in report["top"] + report["bottom"]] == [VALUES[i] for i in TOP3 + BOTTOM3]
    assert [e["text"] for e in report["top"]] == decoded(TOP3)


def test_export_keeps_the_examples_outside_the_lowest_fraction(run, tmp_path, capsys):
    out = tmp_path / "curated"
    assert main(["attribution", str(run.run_dir), "--drop-lowest", "0.25", "--export", str(out)]) == 0
    assert "kept 10 examples" in capsys.readouterr().out
    kept = sorted(set(VALUES) - set(BOTTOM3))  # round(0.25 * 13) = 3 dropped
    assert [json.loads(line) for line in (out / "kept.jsonl").read_text().splitlines()] == \
        [{"text": text} for text in decoded(kept)]
    dropped = tmp_path / "curated.dropped.jsonl"
    assert [json.loads(line)["text"] for line in dropped.read_text().splitlines()] == decoded(sorted(BOTTOM3))
    assert [p.name for p in out.iterdir()] == ["kept.jsonl"]  # DIR is a dataset: nothing else in it


def test_export_refuses_a_directory_holding_other_files(run, tmp_path, capsys):
    (tmp_path / "curated").mkdir()
    (tmp_path / "curated" / "notes.txt").write_text("x")
    assert main(["attribution", str(run.run_dir), "--drop-lowest", "0.5", "--export", str(tmp_path / "curated")]) == 2
    assert "already holds notes.txt" in capsys.readouterr().err


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.1", "nan"])
def test_drop_lowest_outside_0_to_1_exits_2_naming_the_value(run, tmp_path, capsys, fraction):
    assert main(["attribution", str(run.run_dir), "--drop-lowest", fraction, "--export", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --drop-lowest must be a fraction strictly between 0 and 1")
    assert repr(float(fraction)) in err
    assert not (tmp_path / "x").exists()


def test_drop_lowest_without_export_exits_2(run, capsys):
    assert main(["attribution", str(run.run_dir), "--drop-lowest", "0.1"]) == 2
    assert "--drop-lowest FRACTION and --export DIR go together" in capsys.readouterr().err


def test_a_target_without_dot_products_exits_2_with_one_line(results, capsys):
    spec = make_spec("transformer", label="plain", hidden_dim=32, seq_length=32, dataset="shakespeare")
    paths = RunPaths.of(spec.folder_name, spec.label, results)
    (paths.grad_dotprods_dir).mkdir(parents=True)  # a graddotprod run that has not logged yet
    paths.spec_json.write_text(json.dumps({"spec": spec.to_dict()}))
    for target in (str(paths.folder), str(paths.run_dir), str(results / "nowhere" / "x")):
        assert main(["attribution", target]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and target in err[0], err


def test_a_results_folder_reports_every_run_with_dot_products(results, tmp_path, capsys):
    write_run(results, graddot_spec("a"))
    write_run(results, graddot_spec("b"))
    (results / "transformer" / "empty").mkdir()
    out = tmp_path / "pictures"
    assert main(["attribution", str(results / "transformer"), "--json", "--top", "1", "--out", str(out)]) == 0
    reports = json.loads(capsys.readouterr().out)["runs"]
    assert [r["run"] for r in reports] == ["transformer/a", "transformer/b"]
    assert all((out / "transformer" / label / "steps.png").is_file() for label in "ab")
    assert main(["attribution", str(results), "--drop-lowest", "0.1", "--export", str(tmp_path / "c")]) == 2
    assert "--export writes one run's examples" in capsys.readouterr().err


def test_a_registry_reports_only_its_graddotprod_runs(results, tmp_path, capsys):
    module = tmp_path / "attribution_registry.py"
    module.write_text(
        "from orchestrator.spec import make_spec\n"
        "common = dict(hidden_dim=32, seq_length=32, dataset='shakespeare', partition='local')\n"
        "ATTRIBUTION_TEST = [make_spec('transformer', label='r', method='graddotprod', val_batch_size=2,\n"
        "                              attribution_dataset='shakespeare', **common),\n"
        "                    make_spec('transformer', label='plain', **common)]\n")
    write_run(results, graddot_spec())
    write_run(results, make_spec("transformer", label="plain", hidden_dim=32, seq_length=32,
                                 dataset="shakespeare", partition="local"))
    assert main(["--registry-module", str(module), "attribution", "ATTRIBUTION_TEST", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "registry ATTRIBUTION_TEST" and [r["run"] for r in report["runs"]] == ["transformer/r"]


def test_an_unreadable_chunk_exits_2_naming_it(run, capsys):
    garbage = run.grad_dotprods_dir / dotlog.chunk_name(0, 9, 9)
    garbage.write_bytes(b"not an npz archive")
    assert main(["attribution", str(run.run_dir)]) == 2
    assert f"unreadable dot-product chunk {garbage}" in capsys.readouterr().err


def test_a_torn_chunk_exits_2_naming_it(run, capsys):
    whole = dotlog.chunks(run.grad_dotprods_dir)[0][0]
    torn = run.grad_dotprods_dir / dotlog.chunk_name(0, 9, 9)
    torn.write_bytes(whole.read_bytes()[:200])
    assert main(["attribution", str(run.run_dir)]) == 2
    assert f"unreadable dot-product chunk {torn}" in capsys.readouterr().err


def test_the_command_module_imports_nothing_heavy():
    code = ("import sys, orchestrator.commands.attribution; "
            "print([m for m in ('torch', 'pandas', 'scipy', 'matplotlib') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
