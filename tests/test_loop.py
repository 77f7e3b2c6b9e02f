"""The shared training loop, driven through the entry point with tiny transformer runs."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, read_status
from orchestrator.spec import make_spec
from workloads import interrupt
from workloads.interrupt import RunInterrupted
from workloads.loop import latest_checkpoint, lr_at
from workloads.run import run

REPO = Path(__file__).resolve().parent.parent


def tiny_spec(**fields):
    fields = {"hidden_dim": 32, "num_layers": 1, "num_heads": 2, "seq_length": 64, "label": "tiny",
              "partition": "local", "target_effective_batch_size": 8, "train_tokens": 8 * 64 * 40,
              "learning_rate": 3e-3, "log_interval_steps": 5, "eval_interval_steps": 10, "eval_batches": 2,
              "checkpoint_interval_steps": 15, **fields}
    return make_spec("transformer", **fields)


def write_spec(spec, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{spec.label}.json"
    path.write_text(json.dumps(spec.to_dict()))
    return path


def run_spec(spec, root: Path, **options):
    return run(write_spec(spec, root / "specs"), root=root, **options)


def read_csv(spec, root):
    with open(RunPaths.of(spec.folder_name, spec.label, root).metrics_csv, newline="") as handle:
        return list(csv.DictReader(handle))


def final_weights(spec, root):
    state = torch.load(latest_checkpoint(RunPaths.of(spec.folder_name, spec.label, root)), weights_only=True)
    return state["model"]


def assert_same_curve(a, b):
    assert [r["optimizer_step"] for r in a] == [r["optimizer_step"] for r in b]
    for x, y in zip(a, b):
        assert x["tokens_processed"] == y["tokens_processed"]
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), abs=1e-6)
        assert (x["val_loss"] == "") == (y["val_loss"] == "")
        if x["val_loss"]:
            assert float(x["val_loss"]) == pytest.approx(float(y["val_loss"]), abs=1e-6)


# ------------------------------------------------------------------ schedule
def test_warmup_then_cosine_to_the_minimum_at_the_last_step():
    spec = tiny_spec(learning_rate=1e-2, warmup_steps=4, lr_min_ratio=0.1)
    assert spec.optimizer_steps == 40
    assert [lr_at(spec, s) for s in (1, 2, 4)] == pytest.approx([2.5e-3, 5e-3, 1e-2])
    assert lr_at(spec, 22) == pytest.approx(0.5 * (1e-2 + 1e-3))
    assert lr_at(spec, 40) == pytest.approx(1e-3)
    rates = [lr_at(spec, s) for s in range(4, 41)]
    assert all(b < a for a, b in zip(rates, rates[1:]))


def test_warmup_then_constant():
    spec = tiny_spec(learning_rate=1e-2, warmup_steps=4, lr_schedule="warmup_constant")
    assert [lr_at(spec, s) for s in (2, 4, 5, 40)] == pytest.approx([5e-3, 1e-2, 1e-2, 1e-2])


# ------------------------------------------------------------- batching
def test_gradient_accumulation_gives_the_same_update(tmp_path):
    spec = tiny_spec(train_tokens=8 * 64 * 3, grad_clip=None)
    run_spec(spec, tmp_path / "8x1", batch_size=8, grad_accum=1)
    run_spec(spec, tmp_path / "4x2", batch_size=4, grad_accum=2)
    one, two = final_weights(spec, tmp_path / "8x1"), final_weights(spec, tmp_path / "4x2")
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=0, atol=1e-6)
    assert_same_curve(read_csv(spec, tmp_path / "8x1"), read_csv(spec, tmp_path / "4x2"))


def test_a_batch_that_does_not_make_the_effective_batch_is_refused(tmp_path):
    with pytest.raises(UsageError, match="target_effective_batch_size=8"):
        run_spec(tiny_spec(), tmp_path, batch_size=4, grad_accum=3)


def test_csv_rows_logged_steps_and_accounting(tmp_path):
    spec = tiny_spec(train_tokens=8 * 64 * 23, log_interval_steps=5, eval_interval_steps=10)
    status = run_spec(spec, tmp_path, batch_size=2)
    rows = read_csv(spec, tmp_path)
    assert [int(r["optimizer_step"]) for r in rows] == [1, 5, 10, 15, 20, 23]
    assert [r["val_loss"] != "" for r in rows] == [False, False, True, False, True, True]
    for row in rows:
        tokens = int(row["optimizer_step"]) * 2 * 4 * 64
        assert int(row["tokens_processed"]) == tokens
        assert int(row["theoretical_flops_chinchilla"]) == 6 * spec.total_params * tokens
        assert float(row["grad_norm"]) > 0 and float(row["tokens_per_s"]) > 0
    assert status["state"] == "completed" and status["identity"] == spec.identity
    assert status["val_loss"] == float(rows[-1]["val_loss"])


# ------------------------------------------------------------------- faults
def test_resume_after_sigusr2_reproduces_the_uninterrupted_run(tmp_path):
    spec = tiny_spec()
    run_spec(spec, tmp_path / "whole")

    def stop_at_20(step, model):
        if step == 20:
            os.kill(os.getpid(), signal.SIGUSR2)

    with pytest.raises(RunInterrupted) as stopped:
        run_spec(spec, tmp_path / "halves", on_step=stop_at_20)
    assert stopped.value.optimizer_step == 20 and stopped.value.signum == signal.SIGUSR2
    paths = RunPaths.of(spec.folder_name, spec.label, tmp_path / "halves")
    assert read_status(paths)["state"] == "interrupted" and read_status(paths)["interrupted_by"] == "SIGUSR2"
    assert latest_checkpoint(paths).name == "step_00000020.pt"
    assert int(read_csv(spec, tmp_path / "halves")[-1]["optimizer_step"]) == 20

    status = run_spec(spec, tmp_path / "halves")
    assert status["state"] == "completed"
    assert_same_curve(read_csv(spec, tmp_path / "whole"), read_csv(spec, tmp_path / "halves"))


def test_a_crashed_run_resumes_from_its_checkpoint_and_drops_later_rows(tmp_path):
    spec = tiny_spec()
    run_spec(spec, tmp_path / "whole")

    def crash_at_22(step, model):
        if step == 22:
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError, match="node lost"):
        run_spec(spec, tmp_path / "crashed", on_step=crash_at_22)
    paths = RunPaths.of(spec.folder_name, spec.label, tmp_path / "crashed")
    assert read_status(paths)["state"] == "failed" and "node lost" in read_status(paths)["error"]
    assert int(read_csv(spec, tmp_path / "crashed")[-1]["optimizer_step"]) == 20  # checkpoint at 15

    run_spec(spec, tmp_path / "crashed")
    assert_same_curve(read_csv(spec, tmp_path / "whole"), read_csv(spec, tmp_path / "crashed"))


def test_a_non_finite_loss_stops_the_run_as_diverged(tmp_path):
    spec = tiny_spec(log_interval_steps=5)

    def poison_at_7(step, model):
        if step == 7:
            with torch.no_grad():
                model.blocks[0].mlp.fc.weight.fill_(float("nan"))

    status = run_spec(spec, tmp_path, on_step=poison_at_7)
    assert status["state"] == "diverged" and status["optimizer_step"] == 10
    assert read_status(RunPaths.of(spec.folder_name, spec.label, tmp_path))["state"] == "diverged"
    rows = read_csv(spec, tmp_path)
    assert [r["optimizer_step"] for r in rows] == ["1", "5", "10"]
    assert rows[-1]["loss"] == "nan" and rows[-1]["val_loss"] == ""
    assert run_spec(spec, tmp_path, on_step=lambda step, model: pytest.fail("trained again")) == status


def test_a_completed_run_is_not_trained_again(tmp_path):
    spec = tiny_spec(train_tokens=8 * 64 * 3)
    first = run_spec(spec, tmp_path)
    again = run_spec(spec, tmp_path, on_step=lambda step, model: pytest.fail("trained again"))
    assert again == first


def test_another_experiment_under_the_same_label_is_refused(tmp_path):
    run_spec(tiny_spec(train_tokens=8 * 64 * 3), tmp_path)
    with pytest.raises(UsageError, match="holds experiment"):
        run_spec(tiny_spec(train_tokens=8 * 64 * 3, learning_rate=1e-2), tmp_path)


def test_unknown_dataset_path_fails_before_training(tmp_path):
    spec = tiny_spec(dataset="/no/such/corpus")
    with pytest.raises(UsageError, match="does not exist"):
        run_spec(spec, tmp_path, on_step=lambda step, model: pytest.fail("trained"))
    paths = RunPaths.of(spec.folder_name, spec.label, tmp_path)
    assert read_status(paths)["state"] == "failed" and not paths.metrics_csv.exists()


def test_a_failed_start_does_not_block_the_label_for_a_corrected_spec(tmp_path):
    with pytest.raises(UsageError):
        run_spec(tiny_spec(train_tokens=8 * 64 * 3, dataset="/no/such/corpus"), tmp_path)
    assert run_spec(tiny_spec(train_tokens=8 * 64 * 3), tmp_path)["state"] == "completed"


def test_signal_handlers_are_installed_only_during_the_run():
    before = signal.getsignal(signal.SIGUSR2)
    with interrupt.handling_signals():
        assert signal.getsignal(signal.SIGUSR2) is interrupt.request_stop
        assert signal.getsignal(signal.SIGTERM) is interrupt.request_stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.stop_requested() == signal.SIGTERM
    assert signal.getsignal(signal.SIGUSR2) is before
    assert interrupt.stop_requested() is None


# ------------------------------------------------------------ the script
def script(*args, env=None):
    return subprocess.run([sys.executable, "-m", "workloads.run", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_script_trains_a_run_directory_spec_in_place(tmp_path):
    spec = tiny_spec(train_tokens=8 * 64 * 3)
    paths = RunPaths.of(spec.folder_name, spec.label, tmp_path / "results")
    paths.run_dir.mkdir(parents=True)
    paths.spec_json.write_text(json.dumps({"spec": spec.to_dict()}))
    done = script(paths.spec_json, env={"ORCHESTRATOR_RESULTS_DIR": str(tmp_path / "elsewhere")})
    assert done.returncode == 0, done.stderr
    assert read_status(paths)["state"] == "completed"
    config = json.loads(paths.config_json.read_text())
    assert config["identity"] == spec.identity and config["derived"] == spec.derived()
    assert not (tmp_path / "elsewhere").exists()


def test_script_exit_status_two_for_a_usage_error(tmp_path):
    done = script(write_spec(tiny_spec(dataset="/no/such/corpus"), tmp_path), "--results-dir", tmp_path)
    assert done.returncode == 2 and "does not exist" in done.stderr


# --------------------------------------------------------------- DDP (gloo)
def _ddp_rank(rank, root, spec_dict, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from orchestrator.spec import spec_from_dict
    from workloads.loop import train
    from workloads.transformer.model import GPT

    train(spec_from_dict(spec_dict), GPT, root=root, batch_size=4)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_data_parallel_ranks_equal_one_process_accumulating(tmp_path):
    import socket

    spec = tiny_spec(gpus=2, train_tokens=8 * 64 * 12, eval_interval_steps=6)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_rank, args=(tmp_path / "ddp", spec.to_dict(), port), nprocs=2)
    run_spec(spec, tmp_path / "single", batch_size=4)  # one rank: grad_accum 2 takes the other's share
    assert_same_curve(read_csv(spec, tmp_path / "ddp"), read_csv(spec, tmp_path / "single"))
    config = json.loads(RunPaths.of(spec.folder_name, spec.label, tmp_path / "ddp").config_json.read_text())
    assert (config["plan"]["batch_size"], config["plan"]["grad_accum"], config["plan"]["data_parallel"]) == (4, 1, 2)
    ddp, single = final_weights(spec, tmp_path / "ddp"), final_weights(spec, tmp_path / "single")
    for name in ddp:
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=1e-5)
