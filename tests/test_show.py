"""`show` estimates each experiment's time where it runs (measured on the CPU), totals it, and
warns about what will not finish."""

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
