"""`show --table lingua`: lingua's sizes x GPUs x partitions, timed from measured runs where
there are any and from the assumed MFU where not."""

import json
import subprocess
import sys

import pytest

from orchestrator.lingua import lingua_experim
from orchestrator.profiles import get_profile
from test_show import completed_run


def table(*args):
    return subprocess.run([sys.executable, "-m", "orchestrator", "show", "--table", "lingua", *args],
                          capture_output=True, text=True, timeout=60)


def table_rows(*args):
    result = table(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["rows"]


def lingua_27m(gpus, partition, steps=500):
    return lingua_experim(512, 8, 8, steps=steps, data_root="/data/lingua", gpus=gpus, partition=partition,
                          label=f"l27_{partition}_{gpus}", folder_name="lingua_small")[0]


def test_the_27m_rows_have_the_trainers_parameters_and_16k_tokens_a_gpu_at_the_assumed_mfu():
    rows = table_rows("--sizes", "27m", "--gpus", "1,8", "--partition", "sphinx,miso", "--steps", "500")
    assert [(r["gpus"], r["partition"]) for r in rows] == [(1, "sphinx"), (1, "miso"), (8, "sphinx"), (8, "miso")]
    for r in rows:
        spec = lingua_27m(r["gpus"], r["partition"])
        assert (r["dim"], r["layers"], r["heads"]) == (512, 8, 8)
        assert r["total_params"] == spec.total_params and 27e6 < r["total_params"] < 28e6
        assert r["tokens_per_step"] == 16384 * r["gpus"]
        rate = r["gpus"] * get_profile(r["partition"]).peak_flops_per_gpu * 0.3 / spec.flops_per_token()
        assert r["tokens_per_s"] == pytest.approx(rate) and r["tokens_per_s_per_gpu"] == pytest.approx(rate / r["gpus"])
        assert r["wall_s"] == pytest.approx(500 * r["tokens_per_step"] / rate)
        assert r["basis"] == "assumed_mfu" and r["mfu"] == pytest.approx(0.3)


def test_a_completed_run_of_the_shape_times_the_row_and_says_so():
    miso = lingua_27m(8, "miso", steps=200)  # another budget: the same shape
    completed_run(miso, "lingua_27m_miso_8gpu", [5e3, 500e3, 600e3, 700e3])
    rows = table_rows("--sizes", "27m", "--gpus", "1,8", "--partition", "miso", "--steps", "300")
    one, eight = rows
    assert eight["basis"] == "measured_runs" and one["basis"] == "assumed_mfu"
    assert eight["tokens_per_s"] == 600e3 and eight["tokens_per_s_per_gpu"] == 75e3
    assert eight["wall_s"] == pytest.approx(300 * 8 * 16384 / 600e3)
    assert eight["mfu"] == pytest.approx(600e3 * miso.flops_per_token() / (8 * 989e12))
    assert eight["measured_throughput"] == {"tokens_per_s": 600e3, "rows": 3,
                                            "runs": ["lingua_small/lingua_27m_miso_8gpu"], "completed_runs": 1}
    text = table("--sizes", "27m", "--gpus", "1,8", "--partition", "miso", "--steps", "300").stdout
    row = next(line for line in text.splitlines() if line.startswith("27m") and line.split()[6] == "8")
    assert row.endswith("measured (1 completed run)") and "75k" in row and "131,072" in row
    assert "27m on miso x 8: the median of 3 CSV rows of 1 completed run (lingua_small/lingua_27m_miso_8gpu)" in text
    assert "300 steps" in text.splitlines()[1]


def test_gpu_counts_a_partition_cannot_give_are_left_out_and_said():
    result = table("--sizes", "27m", "--gpus", "1,8", "--partition", "local")
    assert result.returncode == 0, result.stderr
    assert "left out: 8 GPUs on local (at most 2 a job)" in result.stdout
    assert [line.split()[6] for line in result.stdout.splitlines() if line.startswith("27m")] == ["1"]


@pytest.mark.parametrize("args, message", [
    (["--sizes", "12m"], "unknown size in --sizes '12m'"),
    (["--partition", "sphnix"], "unknown partition in --partition 'sphnix' (did you mean 'sphinx'?)"),
    (["--gpus", "0"], "--gpus must be positive integers, got '0'"),
    (["QUICKSTART"], "give a registry or --table, not both"),
])
def test_bad_table_arguments_are_one_line_errors(args, message):
    result = table(*args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_table_options_without_table_are_an_error():
    result = subprocess.run([sys.executable, "-m", "orchestrator", "show", "QUICKSTART", "--steps", "5"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--steps goes only with --table" in result.stderr


def test_the_table_imports_no_heavy_module():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "orchestrator", "show", "--table", "lingua"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert not imported & {"torch", "pandas", "scipy", "matplotlib", "datasets", "numpy"}
