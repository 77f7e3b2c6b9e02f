"""GradDotProd in the training loop: the same training as "regular", and a log of every training
sample's exact gradient dot product with the validation gradient, consistent across resumes
and data-parallel ranks."""

import os
import signal

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, read_status
from orchestrator.spec import make_spec
from test_lstm_ddp import assert_exited, launch, wait
from workloads import dotlog
from workloads.attribution import load_attribution_data
from workloads.data import TokenData
from workloads import interrupt
from workloads.interrupt import RunInterrupted
from workloads.loop import latest_checkpoint, train
from workloads.transformer.model import GPT

STEPS = 20


def tiny_spec(**fields):
    fields = {"hidden_dim": 32, "num_layers": 2, "num_heads": 2, "seq_length": 16, "label": "gd",
              "partition": "local", "target_effective_batch_size": 8, "train_tokens": 8 * 16 * STEPS,
              "learning_rate": 3e-3, "log_interval_steps": 1, "eval_interval_steps": 10, "eval_batches": 1,
              "checkpoint_interval_steps": 10 ** 6, "method": "graddotprod", "val_batch_size": 2,
              "attribution_dataset": "shakespeare", "dot_prod_save_interval": 5, **fields}
    return make_spec("transformer", **fields)


def regular(spec):
    return spec.replace(method="regular", val_batch_size=None, attribution_dataset=None)


def float64_gpt(spec):
    return GPT(spec).double()


def run(spec, root, data_cache, build=GPT, **options):
    return train(spec, build, root=root, batch_size=4, grad_accum=2, data_cache=data_cache, **options)


def final_weights(spec, root):
    return torch.load(latest_checkpoint(RunPaths.of(spec.folder_name, spec.label, root)), weights_only=True)["model"]


def log_dir(spec, root):
    return RunPaths.of(spec.folder_name, spec.label, root).grad_dotprods_dir


def csv_losses(spec, root):
    import csv

    with open(RunPaths.of(spec.folder_name, spec.label, root).metrics_csv, newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


# ------------------------------------------------------------------ the spec
@pytest.mark.parametrize("fields, message", [
    ({"attribution_dataset": None}, "needs attribution_dataset"),
    ({"val_batch_size": None}, "needs val_batch_size > 0"),
    ({"val_batch_size": 0}, "needs val_batch_size > 0"),
    ({"attribution_dataset": "shakspeare"}, "unknown attribution_dataset 'shakspeare'"),
    ({"method": "ghost"}, "unknown method 'ghost'"),
    ({"compile": True}, "does not run under compile=True"),
    ({"fsdp": "full_shard"}, "fsdp must be 'none'"),
    ({"dot_prod_save_interval": 0}, "dot_prod_save_interval must be > 0"),
    ({"val_batch_size": 3, "gpus": 2}, "val_batch_size=3 is not divisible by gpus=2"),
    ({"method": "regular"}, "is for method='graddotprod'"),
])
def test_an_incomplete_graddotprod_experiment_fails_at_expansion(fields, message):
    with pytest.raises(UsageError, match=message) as error:
        tiny_spec(**fields)
    assert len(str(error.value).splitlines()) == 1


def test_the_attribution_fields_are_in_the_identity_and_the_save_interval_is_not():
    spec = tiny_spec()
    assert spec.identity != regular(spec).identity
    assert spec.identity != spec.replace(val_batch_size=4).identity
    assert spec.identity != spec.replace(attribution_dataset="kjv").identity
    assert spec.identity == spec.replace(dot_prod_save_interval=1).identity


# ------------------------------------------------------------------ equivalence
def test_graddotprod_takes_the_same_steps_as_regular_in_float64(tmp_path, data_cache):
    spec = tiny_spec()
    assert run(regular(spec), tmp_path / "regular", data_cache, float64_gpt)["state"] == "completed"
    assert run(spec, tmp_path / "graddot", data_cache, float64_gpt)["state"] == "completed"
    a, b = final_weights(regular(spec), tmp_path / "regular"), final_weights(spec, tmp_path / "graddot")
    torch.manual_seed(spec.seed)
    initial = GPT(spec).double().state_dict()
    difference = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - initial[k]).abs().max().item() for k in a)
    print(f"float64, {STEPS} steps (accumulation 2, clipping, AdamW): largest weight difference {difference:.3g}, "
          f"largest weight change {moved:.3g}")
    assert moved > 1e-2 and difference <= 1e-10


def test_graddotprod_logs_the_same_losses_as_regular_in_float32(tmp_path, data_cache):
    spec = tiny_spec()
    run(regular(spec), tmp_path / "regular", data_cache)
    run(spec, tmp_path / "graddot", data_cache)
    a, b = csv_losses(regular(spec), tmp_path / "regular"), csv_losses(spec, tmp_path / "graddot")
    assert len(a) == len(b) == STEPS
    difference = max(abs(x - y) for x, y in zip(a, b))
    print(f"float32: largest CSV loss difference over {STEPS} steps {difference:.3g}")
    assert difference <= 1e-6


# ------------------------------------------------------------------ the log
def per_sample_dots(model, spec, train_rows, val_rows):
    """<grad l_i, grad L_val> from torch.func per-sample gradients and an ordinary backward."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def row_loss(p, row):
        return functional_call(model, p, (row[None, :-1], row[None, 1:]), {"per_row": True})[0]

    per_sample = vmap(grad(row_loss), in_dims=(None, 0))(params, train_rows)
    model.zero_grad()
    model(val_rows[:, :-1], val_rows[:, 1:], per_row=True).mean().backward()
    return sum((per_sample[k].flatten(1) @ p.grad.flatten()) for k, p in model.named_parameters())


def test_the_log_holds_each_samples_exact_dot_product_with_the_validation_gradient(tmp_path, data_cache):
    spec = tiny_spec()
    snapshots = {}

    def snapshot(step, model):
        snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    run(spec, tmp_path, data_cache, float64_gpt, on_step=snapshot)
    rows = dotlog.read_dots(log_dir(spec, tmp_path))
    data, val_data = TokenData.for_spec(spec, data_cache), load_attribution_data(spec, data_cache)
    assert len(rows["step"]) == STEPS * 8 and np.array_equal(rows["sample"], np.arange(STEPS * 8))
    assert np.array_equal(rows["step"], np.repeat(np.arange(1, STEPS + 1), 8))
    assert np.array_equal(rows["example"], data.example_ids(0, STEPS * 8))
    torch.manual_seed(spec.seed)
    model = GPT(spec).double()
    worst = 0.0
    for step in (1, 7):
        if step > 1:
            model.load_state_dict(snapshots[step - 1])
        train_rows = torch.from_numpy(data.train_batch((step - 1) * 8, 8))
        val_rows = torch.from_numpy(val_data.val_stream((step - 1) * 2, 2))
        expected = per_sample_dots(model, spec, train_rows, val_rows).numpy()
        got = rows["dot"][rows["step"] == step]
        worst = max(worst, np.max(np.abs(got - expected) / np.abs(expected).max()))
        with torch.no_grad():
            losses = model(train_rows[:, :-1], train_rows[:, 1:], per_row=True).numpy()
            val_loss = model(val_rows[:, :-1], val_rows[:, 1:], per_row=True).mean().item()
        assert np.allclose(rows["loss"][rows["step"] == step], losses, rtol=1e-12)
        assert np.allclose(rows["val_loss"][rows["step"] == step], val_loss, rtol=1e-12)
    print(f"logged dot products vs torch.func per-sample gradients (float64): relative error {worst:.3g}")
    assert worst < 1e-9


def test_the_value_table_sums_lr_times_dot_over_each_examples_visits(tmp_path, data_cache):
    spec = tiny_spec()
    run(spec, tmp_path, data_cache)
    directory = log_dir(spec, tmp_path)
    rows, table = dotlog.read_dots(directory), dotlog.read_values(directory)
    assert sorted(p.name for p, *_ in dotlog.chunks(directory)) == [
        "rank000_steps00000001-00000005.npz", "rank000_steps00000006-00000010.npz",
        "rank000_steps00000011-00000015.npz", "rank000_steps00000016-00000020.npz"]
    example = int(table["example"][0])
    here = rows["example"] == example
    assert table["value"][0] == pytest.approx(float(np.sum(rows["lr"][here] * rows["dot"][here])), rel=1e-12)
    assert np.array_equal(table["val_loss_change"], -table["value"])
    assert table["times_seen"].sum() == STEPS * 8 and np.all(np.diff(table["value"]) >= 0)


def test_a_resumed_run_logs_every_step_once_as_the_uninterrupted_run_does(tmp_path, data_cache):
    spec = tiny_spec(checkpoint_interval_steps=10)
    run(spec, tmp_path / "whole", data_cache)

    def stop_at_13(step, model):
        if step == 13:
            os.kill(os.getpid(), signal.SIGUSR2)

    with interrupt.handling_signals(), pytest.raises(RunInterrupted):
        run(spec, tmp_path / "halves", data_cache, on_step=stop_at_13)
    directory = log_dir(spec, tmp_path / "halves")
    assert [c[2:] for c in dotlog.chunks(directory)] == [(1, 5), (6, 10), (11, 13)]
    # a crash after a save past the checkpoint: the log runs ahead of step 13's checkpoint
    rows = dotlog.read_dots(directory)
    ahead = {k: v[rows["step"] >= 11] for k, v in rows.items()}
    ahead["step"] = ahead["step"] + 3  # steps 14..16, which the checkpoint has not seen
    dotlog.write_chunk(directory, 0, ahead)
    assert run(spec, tmp_path / "halves", data_cache)["state"] == "completed"
    whole, halves = dotlog.read_dots(log_dir(spec, tmp_path / "whole")), dotlog.read_dots(directory)
    assert np.array_equal(whole["step"], halves["step"]) and np.array_equal(whole["sample"], halves["sample"])
    assert np.array_equal(whole["example"], halves["example"])
    assert np.allclose(whole["dot"], halves["dot"], rtol=1e-5, atol=1e-7)


def test_truncate_rewrites_a_chunk_that_straddles_the_checkpoint(tmp_path):
    rows = {name: np.arange(10).astype(dtype) for name, dtype in dotlog.COLUMNS.items()}
    rows["step"] = np.repeat(np.arange(8, 13), 2)
    dotlog.write_chunk(tmp_path, 0, rows)
    dotlog.write_chunk(tmp_path, 0, {**rows, "step": rows["step"] + 5})
    dotlog.truncate_after(tmp_path, 10)
    assert [c[1:] for c in dotlog.chunks(tmp_path)] == [(0, 8, 10)]
    assert np.array_equal(dotlog.read_dots(tmp_path)["sample"], np.arange(6))


def test_a_step_logged_twice_is_an_error_not_a_double_count(tmp_path):
    rows = {name: np.arange(4).astype(dtype) for name, dtype in dotlog.COLUMNS.items()}
    rows["step"] = np.array([3, 3, 4, 4])
    dotlog.write_chunk(tmp_path, 0, rows)
    dotlog.write_chunk(tmp_path, 1, rows)
    with pytest.raises(UsageError, match="step 3 sample 0 is logged twice"):
        dotlog.read_dots(tmp_path)


# ------------------------------------------------------------------ data parallel
@pytest.mark.slow
def test_two_ranks_log_the_dot_products_of_one_rank(tmp_path, data_cache):
    """Each rank dots its own samples with the all-reduced gradient of all validation rows."""
    spec = tiny_spec(label="gd_dp")
    TokenData.for_spec(spec, data_cache)
    train(spec, GPT, root=tmp_path / "one", batch_size=8, data_cache=data_cache)
    (tmp_path / "two").mkdir()
    assert_exited(wait(launch(spec, tmp_path / "two", data_cache, world=2), tmp_path / "two"), 0, tmp_path / "two")
    assert read_status(RunPaths.of(spec.folder_name, spec.label, tmp_path / "two"))["state"] == "completed"
    one, two = dotlog.read_dots(log_dir(spec, tmp_path / "one")), dotlog.read_dots(log_dir(spec, tmp_path / "two"))
    assert np.array_equal(one["sample"], two["sample"]) and np.array_equal(one["example"], two["example"])
    assert set(two["rank"][two["sample"] % 8 < 4]) == {0} and set(two["rank"][two["sample"] % 8 >= 4]) == {1}
    assert np.allclose(one["val_loss"], two["val_loss"], rtol=1e-5)
    error = np.max(np.abs(one["dot"] - two["dot"])) / np.max(np.abs(one["dot"]))
    print(f"2 ranks vs 1: largest dot product difference {error:.3g} of the largest dot")
    assert error < 1e-4
    assert len(dotlog.read_values(log_dir(spec, tmp_path / "two"))["example"]) == len(set(one["example"]))
