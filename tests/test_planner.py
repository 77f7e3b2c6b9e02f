"""Memory model and batch planner: exact effective batch, fits the budget, maximal, clear errors."""

import dataclasses

import pytest

from orchestrator.errors import UsageError
from orchestrator.planner import divisors, estimate_memory, memory_fraction, plan_batch
from orchestrator.profiles import get_profile
from orchestrator.spec import make_spec

WIDTHS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
GPU_SIZES_GB = (24, 40, 48, 80, 94, 141)


def gpu(mem_gb, base="sphinx"):
    return dataclasses.replace(get_profile(base), gpu_mem_gb=mem_gb)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("target", (128, 96, 512))
def test_plans_keep_the_effective_batch_and_fit_the_budget(width, target):
    spec = make_spec(hidden_dim=width, label="x", target_effective_batch_size=target)
    previous_batch = 0
    for mem_gb in GPU_SIZES_GB:
        profile = gpu(mem_gb)
        estimate = estimate_memory(spec, profile)
        budget = memory_fraction(width) * mem_gb
        try:
            plan = plan_batch(spec, profile)
        except UsageError as err:
            assert estimate.peak_gb(1) > budget
            assert "even at batch 1" in str(err)
            assert previous_batch == 0  # a smaller GPU cannot fit what a bigger one cannot
            continue
        assert plan.batch_size * plan.grad_accum * plan.data_parallel == target
        assert target % plan.batch_size == 0
        assert plan.peak_memory_gb <= plan.memory_budget_gb == pytest.approx(budget)
        larger = [b for b in divisors(target) if b > plan.batch_size]
        assert not larger or estimate.peak_gb(larger[0]) > budget  # the largest batch that fits
        assert plan.batch_size >= previous_batch  # more memory never means a smaller batch
        previous_batch = plan.batch_size


def test_memory_fractions_follow_the_seed_and_are_configurable():
    assert [memory_fraction(w) for w in (16, 32, 63, 64, 127, 128, 4096)] == [0.6, 0.6, 0.6, 0.45, 0.45, 0.35, 0.35]
    assert memory_fraction(512, fractions=((0, 0.9), (1024, 0.5))) == 0.9
    spec = make_spec(hidden_dim=1024, label="x")
    tight = plan_batch(spec, gpu(80), fractions=((0, 0.1),))
    loose = plan_batch(spec, gpu(80), fractions=((0, 0.9),))
    assert tight.batch_size < loose.batch_size


def test_the_estimate_grows_with_batch_width_and_sequence():
    small = estimate_memory(make_spec(hidden_dim=256, label="x"), gpu(80))
    wide = estimate_memory(make_spec(hidden_dim=512, label="x"), gpu(80))
    long = estimate_memory(make_spec(hidden_dim=256, label="x", seq_length=2048), gpu(80))
    assert small.peak_gb(2) > small.peak_gb(1)
    assert wide.static_gb > small.static_gb and wide.per_sample_gb > small.per_sample_gb
    assert long.per_sample_gb > 3 * small.per_sample_gb


def test_weights_and_adam_state_cost_16_bytes_per_parameter_or_more():
    spec = make_spec(hidden_dim=2048, label="x")
    assert estimate_memory(spec, gpu(80)).static_gb >= 16 * spec.total_params / 1e9


def test_a_model_that_never_fits_gets_a_clear_error():
    with pytest.raises(UsageError, match=r"transformer/huge does not fit on partition 'sphinx' even at batch 1"):
        plan_batch(make_spec(hidden_dim=4096, label="huge"), gpu(80))


def test_data_parallel_ranks_share_the_effective_batch():
    plan = plan_batch(make_spec("lstm", hidden_dim=256, label="l", partition="miso"))
    assert plan.data_parallel == 2
    assert plan.batch_size * plan.grad_accum * 2 == 128
