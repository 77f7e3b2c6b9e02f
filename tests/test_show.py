"""`show` estimates each experiment's time where it runs (measured on the CPU, or by completed runs
of its shape), totals it, and warns about what will not finish; `show --table` is in test_show_table.py."""

import json
import subprocess
import sys

import pytest

from orchestrator.registry import load_registry


def test_show_warns_when_an_experiment_cannot_finish_within_its_time_limit_and_requeues(tmp_path):
    module = tmp_path / "long_runs.py"
    module.write_text("from experiments import gen_experim\n"
                      "LONGISH = gen_experim(1024, label='big', tokens_per_param=80, time_min=240)"
                      " + gen_experim(64, label='small', time_min=240)\n")
    result = subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(module), "show", "LONGISH"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: big needs ~")
    assert "more than its time_min 240 x (1 + 3 requeues) = 16.0h" in warnings[0]


def show(*args, module=None):
    extra = ["--registry-module", str(module)] if module else []
    return subprocess.run([sys.executable, "-m", "orchestrator", *extra, "show", *args],
                          capture_output=True, text=True, timeout=60)


def measured_local(config_dir, overhead_us=10.0, gflops=5.0, eval_cost=0.5, startup_s=3.0, measured="a test bench"):
    profiles = config_dir / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "local.yaml").write_text(
        f"cpu_throughput: {{overhead_us_per_token: {overhead_us}, gflops_per_s: {gflops}, "
        f"eval_token_cost: {eval_cost}, startup_s: {startup_s}, measured: {json.dumps(measured)}}}\n")


def test_the_local_estimate_comes_from_the_measured_cpu_throughput(isolated_environment):

    measured_local(isolated_environment / "config")
    first = {r["label"]: r for r in json.loads(show("QUICKSTART", "--json").stdout)["experiments"]}
    measured_local(isolated_environment / "config", overhead_us=20.0, gflops=2.5)  # every token twice as slow
    second = {r["label"]: r for r in json.loads(show("QUICKSTART", "--json").stdout)["experiments"]}
    for spec in load_registry("QUICKSTART"):
        one, two = first[spec.label]["estimated_wall_s"]["local"], second[spec.label]["estimated_wall_s"]["local"]
        assert two - 3.0 == pytest.approx(2 * (one - 3.0))
        flops_per_token = 6 * spec.total_params + 12 * spec.num_layers * spec.seq_length * spec.hidden_dim
        evaluations = spec.optimizer_steps // spec.eval_interval_steps + bool(spec.optimizer_steps % spec.eval_interval_steps)
        tokens = spec.tokens + 0.5 * evaluations * spec.eval_batches * spec.target_effective_batch_size * spec.seq_length
        assert one == pytest.approx(3.0 + tokens * (10e-6 + flops_per_token / 5e9))
        assert first[spec.label]["estimate_basis"] == "measured"


def test_the_table_says_how_the_local_times_were_measured(isolated_environment):
    measured_local(isolated_environment / "config", measured="bench.py on a 2-core test box, 2026-12-07")
    result = show("QUICKSTART")
    assert result.returncode == 0, result.stderr
    footnote = next(line for line in result.stdout.splitlines() if line.startswith("time on local: measured"))
    assert footnote.endswith("bench.py on a 2-core test box, 2026-12-07")
    assert "3 s start-up" in footnote and "10 us" in footnote and "at 5 GFLOP/s" in footnote


def test_the_time_limit_warning_uses_the_experiments_own_partition(isolated_environment, tmp_path):
    measured_local(isolated_environment / "config", overhead_us=1000.0)  # 1 ms a token: 10M tokens, hours
    module = tmp_path / "limits.py"
    module.write_text("from experiments import gen_experim\n"
                      "LIMITS = gen_experim(16, label='on_cpu', partition='local', train_tokens=10_000_000, time_min=5)"
                      " + gen_experim(16, label='on_gpu', partition='sphinx', train_tokens=10_000_000, time_min=5, seed=1)\n")
    result = show("LIMITS", module=module)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: on_cpu needs ~")
    assert warnings[0].endswith("h on local at the measured CPU speed, more than its time_min 5 x (1 + 3 requeues) = 20.0m")


def test_show_of_a_local_registry_totals_its_time_over_the_runs_trained_at_once():
    from orchestrator.backends import default_parallel

    result = show("QUICKSTART", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    estimates = [r["estimated_wall_s"]["local"] for r in data["experiments"]]
    total = data["totals"]["local"]
    runs = len(load_registry("QUICKSTART"))
    assert total["runs"] == runs and total["parallel"] == default_parallel("local")
    assert total["gpu_s"] == pytest.approx(sum(estimates))
    assert total["wall_s"] == pytest.approx(max(sum(estimates) / total["parallel"], max(estimates)))
    assert 60 < total["wall_s"] < 3600  # a quick start: minutes, with the shipped measurement
    text = show("QUICKSTART").stdout
    assert f"total on local: {runs} runs, " in text and f"with {total['parallel']} at once" in text


def test_tiny_gpu_estimates_are_not_printed_as_fractions_of_a_millisecond():
    text = show("QUICKSTART").stdout
    rows = [line for line in text.splitlines() if line.startswith("qs_")]
    assert len(rows) == len(load_registry("QUICKSTART"))
    assert all(line.split()[-2:] == ["<0.1s", "<0.1s"] for line in rows)
    assert "e-0" not in text and "0.000" not in text


def test_a_typo_in_a_cpu_throughput_key_is_named(isolated_environment):
    profiles = isolated_environment / "config" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "local.yaml").write_text("cpu_throughput: {overhead_us_per_tokn: 1, gflops_per_s: 1, "
                                         "eval_token_cost: 0.3, startup_s: 1, measured: x}\n")
    result = show("QUICKSTART")
    assert result.returncode == 2
    assert "unknown cpu_throughput key" in result.stderr and "did you mean 'overhead_us_per_token'" in result.stderr


def test_gpu_estimates_count_the_attention_flops_the_trainer_counts_in_its_mfu():
    from orchestrator.profiles import get_profile

    result = show("LINGUA_SMALL", "--json", "--mfu", "0.4")
    assert result.returncode == 0, result.stderr
    rows = {r["label"]: r for r in json.loads(result.stdout)["experiments"]}
    for spec in load_registry("LINGUA_SMALL"):
        per_token = 6 * spec.total_params + 12 * spec.num_layers * spec.hidden_dim * spec.seq_length
        assert spec.flops_per_token() == per_token  # rotary: no position embeddings to leave out
        for name in ("sphinx", "miso"):
            expected = spec.tokens * per_token / (spec.gpus * get_profile(name).peak_flops_per_gpu * 0.4)
            assert rows[spec.label]["estimated_wall_s"][name] == pytest.approx(expected, rel=1e-9)
        # at seq 2048 the attention term is a fifth of the work: C = 6ND alone would be that much short
        assert per_token > 1.2 * 6 * spec.total_params


# ------------------------------------------------- estimates from measured throughput
CSV_HEADER = ("optimizer_step,tokens_processed,loss,val_loss,learning_rate,grad_norm,theoretical_flops_chinchilla,"
              "tokens_per_s,elapsed_s,tokens_per_s_per_gpu,mfu,step_time_s,data_wait_s,peak_mem_allocated_gb,"
              "peak_mem_reserved_gb,peak_rss_gb,ranks")
DEVICES = {"sphinx": "NVIDIA A100-SXM4-80GB", "miso": "NVIDIA H200", "local": "cpu"}


def completed_run(spec, label, rates, state="completed", device_name=None, csv_tail=None):
    """A finished run as the trainer leaves it: config JSON, status.json and a metrics CSV whose
    rows have ``rates`` as tokens_per_s (the first row is the start-up row show leaves out)."""
    from orchestrator.paths import RunPaths, atomic_write_json

    paths = RunPaths.of(spec.folder_name, label)
    atomic_write_json(paths.config_json, {
        "spec": spec.to_dict(), "identity": spec.identity, "derived": spec.derived(),
        "plan": {"batch_size": 8, "grad_accum": 1, "data_parallel": spec.gpus},
        "device": "cpu" if spec.partition == "local" else "cuda:0",
        "device_name": device_name or DEVICES[spec.partition]})
    atomic_write_json(paths.status_json, {"state": state, "identity": spec.identity,
                                          "optimizer_step": spec.optimizer_steps})
    lines = [CSV_HEADER]
    for step, rate in enumerate(rates, start=1):
        lines.append(f"{step * 10},{step * 10 * spec.tokens_per_step},2.5,,0.0003,1.0,1e15,{rate},{step},"
                     f"{rate / spec.gpus},0.1,0.2,0.001,10.0,12.0,3.0,{spec.gpus}")
    paths.metrics_csv.write_text("\n".join(lines) + "\n" + (csv_tail or ""))
    return paths


def lingua_small():
    specs = {spec.label: spec for spec in load_registry("LINGUA_SMALL")}
    return specs["lingua_27m_miso_8gpu"], specs["lingua_27m_sphinx_1gpu"]


def show_json(registry="LINGUA_SMALL"):
    result = show(registry, "--json")
    assert result.returncode == 0, result.stderr
    return {r["label"]: r for r in json.loads(result.stdout)["experiments"]}, result.stderr


def test_a_measured_shape_is_timed_at_the_median_rate_of_its_completed_runs_without_their_first_rows():
    miso, _ = lingua_small()
    completed_run(miso, "run_a", [1.0, 500e3, 600e3, 700e3])  # 1.0: the start-up row, left out
    completed_run(miso, "run_b", [2.0, 400e3, 800e3])
    rows, _ = show_json()
    row = rows[miso.label]
    assert row["estimated_wall_s"]["miso"] == pytest.approx(miso.tokens / 600e3)
    assert row["estimate_basis"] == row["estimate_bases"]["miso"] == "measured_runs"
    assert row["measured_throughput"]["miso"] == {
        "tokens_per_s": 600e3, "rows": 5, "runs": [f"{miso.folder_name}/run_a", f"{miso.folder_name}/run_b"],
        "completed_runs": 2}
    assert row["estimate_bases"]["sphinx"] == "assumed_mfu"  # nothing ran this shape on sphinx


def test_the_table_marks_measured_times_and_names_their_runs():
    from orchestrator import fmt

    miso, sphinx = lingua_small()
    completed_run(miso, "run_a", [1.0, 500e3, 600e3, 700e3])
    result = show("LINGUA_SMALL")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith(miso.label)).split()
    # time (own partition miso), time sphinx, time miso
    assert row[-3] == row[-1] == fmt.duration(miso.tokens / 600e3) + "*"
    assert not row[-2].endswith("*")
    assert not any(cell.endswith("*") for cell in next(line for line in lines if line.startswith(sphinx.label)).split())
    footnote = next(line for line in lines if line.startswith("* miso: "))
    assert "600k tokens/s, the median tokens_per_s of 3 CSV rows of 1 completed run of the same shape" in footnote
    assert f"({miso.folder_name}/run_a), for {miso.label}" in footnote
    assert "a time marked * comes from the measured speed of completed runs" in result.stdout
    gpu_time = fmt.duration(8 * miso.tokens / 600e3)
    assert f"total on miso: 1 run, {gpu_time} of GPU time from measured speeds" in result.stdout


def test_runs_of_another_shape_partition_device_or_state_are_not_used():
    miso, sphinx = lingua_small()
    completed_run(miso.replace(hidden_dim=640, num_heads=10), "wider", [1.0, 9e6, 9e6])
    completed_run(miso.replace(seq_length=1024, train_tokens=500 * 64 * 1024), "shorter", [1.0, 9e6, 9e6])
    completed_run(miso.replace(compile=True), "compiled", [1.0, 9e6, 9e6])
    completed_run(miso, "on_a_laptop", [1.0, 9e6, 9e6], device_name="cpu")  # a debug run of a miso spec
    completed_run(miso, "failed", [1.0, 9e6, 9e6], state="failed")
    completed_run(sphinx, "one_gpu", [1.0, 9e6, 9e6])  # same model, 1 GPU: another shape
    completed_run(miso.replace(partition="sphinx"), "eight_a100", [1.0, 100e3, 100e3])
    rows, _ = show_json()
    row = rows[miso.label]
    assert row["estimate_bases"]["miso"] == "assumed_mfu"
    assert row["estimated_wall_s"]["miso"] == pytest.approx(
        miso.tokens * miso.flops_per_token() / (8 * 989e12 * 0.3))
    # the same shape on sphinx's A100s times the miso experiment's sphinx column
    assert row["estimate_bases"]["sphinx"] == "measured_runs"
    assert row["estimated_wall_s"]["sphinx"] == pytest.approx(miso.tokens / 100e3)
    assert row["measured_throughput"]["sphinx"]["runs"] == [f"{miso.folder_name}/eight_a100"]
    assert rows[sphinx.label]["estimate_bases"]["sphinx"] == "measured_runs"  # its own 1-GPU run


def test_a_torn_csv_is_reported_once_and_skipped():
    miso, _ = lingua_small()
    completed_run(miso, "whole", [1.0, 500e3, 700e3])
    torn = completed_run(miso, "torn", [1.0, 100e3], csv_tail="30,3932160,2.4,,0.0003,1.0,1e15,1")  # cut mid-row
    completed_run(miso, "short_row", [1.0, 100e3], csv_tail="30,3932160,2.4\n")
    rows, stderr = show_json()
    assert rows[miso.label]["measured_throughput"]["miso"]["runs"] == [f"{miso.folder_name}/whole"]
    assert rows[miso.label]["estimated_wall_s"]["miso"] == pytest.approx(miso.tokens / 600e3)
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: skipping unreadable")]
    assert len(warnings) == 2
    assert any(str(torn.metrics_csv) in w and "the last line is incomplete" in w for w in warnings)
    assert any("short_row.csv" in w and "line 4 has 3 fields, the header 17" in w for w in warnings)


def test_a_torn_config_or_status_does_not_stop_show():
    miso, _ = lingua_small()
    completed_run(miso, "whole", [1.0, 500e3])
    torn = completed_run(miso, "torn_config", [1.0, 100e3])
    torn.config_json.write_text('{"spec": {"hidden')
    completed_run(miso, "torn_status", [1.0, 100e3]).status_json.write_text("{")
    rows, stderr = show_json()
    assert rows[miso.label]["measured_throughput"]["miso"]["runs"] == [f"{miso.folder_name}/whole"]
    assert "config_torn_config.json" in stderr and "torn_status/status.json" in stderr


def test_a_completed_run_whose_csv_has_no_rates_leaves_the_assumed_mfu():
    miso, _ = lingua_small()
    completed_run(miso, "only_startup", [1.0])  # one row: the start-up row alone
    rows, stderr = show_json()
    assert rows[miso.label]["estimate_bases"]["miso"] == "assumed_mfu"
    assert "warning" not in stderr


def test_a_run_of_one_budget_times_every_budget_of_its_shape_with_the_cpu_start_up_and_validation():
    from orchestrator.commands.show import eval_tokens
    from orchestrator.profiles import get_profile

    specs = load_registry("QUICKSTART")
    smallest = min((s for s in specs if s.hidden_dim == 96), key=lambda s: s.tokens)
    completed_run(smallest, "measured", [1.0, 2000.0, 3000.0, 4000.0])
    rows, _ = show_json("QUICKSTART")
    cpu = get_profile("local").cpu_throughput
    for spec in specs:
        row = rows[spec.label]
        if spec.hidden_dim != 96:  # another model: the CPU measurement of the profile
            assert row["estimate_basis"] == "measured" and not row["measured_throughput"]
            continue
        assert row["estimate_basis"] == "measured_runs"
        assert row["estimated_wall_s"]["local"] == pytest.approx(
            cpu.startup_s + (spec.tokens + cpu.eval_token_cost * eval_tokens(spec)) / 3000.0)


def test_only_the_latest_completed_runs_of_a_shape_are_read():
    import os

    from orchestrator.throughput import LATEST_RUNS

    miso, _ = lingua_small()
    for i in range(LATEST_RUNS + 2):  # the two oldest ran at a tenth of the speed
        paths = completed_run(miso, f"run_{i:02d}", [1.0, 50e3 if i < 2 else 500e3])
        os.utime(paths.status_json, (1e9 + i, 1e9 + i))
    rows, _ = show_json()
    found = rows[miso.label]["measured_throughput"]["miso"]
    assert found["tokens_per_s"] == 500e3 and found["completed_runs"] == LATEST_RUNS + 2
    assert found["runs"] == [f"{miso.folder_name}/run_{i:02d}" for i in range(2, LATEST_RUNS + 2)]
    assert f"of {LATEST_RUNS} of {LATEST_RUNS + 2} completed runs of the same shape" in show("LINGUA_SMALL").stdout
