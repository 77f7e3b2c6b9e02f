"""Every logged row of the metrics CSV carries throughput, MFU, step timing, memory and the world
size, computed from the spec's one FLOPs-per-token definition and the partition's peak."""

import csv
import os
import signal
import socket
import time

import pytest
import torch

from orchestrator.paths import RunPaths
from orchestrator.profiles import get_profile
from orchestrator.spec import make_spec
from orchestrator.status import read_csv_tail
from workloads import loop
from workloads.data import TokenData
from workloads.interrupt import RunInterrupted
from workloads.lstm.model import LSTMLM
from workloads.transformer.model import GPT

from test_loop import read_csv, run_spec, tiny_spec

NEW_COLUMNS = ("tokens_per_s_per_gpu", "mfu", "step_time_s", "data_wait_s", "peak_mem_allocated_gb",
               "peak_mem_reserved_gb", "peak_rss_gb", "ranks")


def assert_rate_columns(rows, spec, ranks, tokens_per_step):
    peak = get_profile(spec.partition).peak_flops_per_gpu
    for row in rows:
        rate, per_gpu = float(row["tokens_per_s"]), float(row["tokens_per_s_per_gpu"])
        step_time, wait = float(row["step_time_s"]), float(row["data_wait_s"])
        assert int(row["ranks"]) == ranks
        assert per_gpu * ranks == pytest.approx(rate, abs=0.05 * ranks + 1e-9)
        assert float(row["mfu"]) == pytest.approx(rate * spec.flops_per_token() / (ranks * peak), rel=1e-5)
        assert step_time > 0 and 0 <= wait < step_time
        assert rate == pytest.approx(tokens_per_step / step_time, rel=2e-3)


# ------------------------------------------------------------- FLOPs per token
def test_transformer_flops_per_token_leaves_out_learned_position_embeddings():
    spec = tiny_spec(positional="learned")
    model = GPT(spec)
    positions = model.wpe.weight.numel()
    assert positions == spec.seq_length * spec.hidden_dim
    L, d, T = spec.num_layers, spec.hidden_dim, spec.seq_length
    assert spec.flops_per_token() == 6 * (sum(p.numel() for p in model.parameters()) - positions) + 12 * L * d * T


def test_transformer_flops_per_token_with_rotary_positions_counts_every_parameter():
    spec = tiny_spec(positional="rotary", num_layers=3, hidden_dim=48, num_heads=4, tie_embeddings=False)
    model = GPT(spec)
    assert model.wpe is None
    L, d, T = 3, 48, spec.seq_length
    assert spec.flops_per_token() == 6 * sum(p.numel() for p in model.parameters()) + 12 * L * d * T


def test_lstm_flops_per_token_is_six_n():
    spec = make_spec("lstm", hidden_dim=32, seq_length=32, label="lstm", partition="local")
    assert spec.flops_per_token() == 6 * sum(p.numel() for p in LSTMLM(spec).parameters())


def test_show_estimates_from_the_same_flops_per_token():
    from orchestrator.commands import show

    spec = tiny_spec(positional="learned")
    assert not hasattr(show, "flops_per_token")  # one definition: the spec's
    profile = get_profile("local")
    cpu = profile.cpu_throughput
    expected = cpu.startup_s + (spec.tokens + cpu.eval_token_cost * show.eval_tokens(spec)) * \
        cpu.seconds_per_token(spec.flops_per_token()) / spec.gpus
    assert show.estimated_wall_s(spec, profile, 0.3) == pytest.approx(expected)


# ------------------------------------------------------------- the CSV
def test_every_logged_row_has_rates_mfu_timing_memory_and_ranks(tmp_path):
    spec = tiny_spec(train_tokens=8 * 64 * 30, log_interval_steps=5, eval_interval_steps=10)
    run_spec(spec, tmp_path, batch_size=4)
    with open(RunPaths.of(spec.folder_name, spec.label, tmp_path).metrics_csv, newline="") as handle:
        assert tuple(csv.DictReader(handle).fieldnames) == loop.COLUMNS
    rows = read_csv(spec, tmp_path)
    assert [int(r["optimizer_step"]) for r in rows] == [1, 5, 10, 15, 20, 25, 30]
    assert all(r[c] != "" for r in rows for c in NEW_COLUMNS if not c.startswith("peak_mem_"))
    assert_rate_columns(rows, spec, ranks=1, tokens_per_step=8 * 64)
    for row in rows:  # a CPU has no allocator peaks; the process's peak RSS stands in
        assert row["peak_mem_allocated_gb"] == row["peak_mem_reserved_gb"] == ""
        assert 0.01 < float(row["peak_rss_gb"]) < 64
    assert read_csv_tail(RunPaths.of(spec.folder_name, spec.label, tmp_path).metrics_csv)[0] == rows[-1]


def test_data_wait_counts_the_time_spent_getting_batches(tmp_path, monkeypatch):
    original = TokenData.train_batch

    def slow_batch(self, first, count):
        time.sleep(0.01)
        return original(self, first, count)

    monkeypatch.setattr(TokenData, "train_batch", slow_batch)
    spec = tiny_spec(train_tokens=8 * 64 * 10)
    run_spec(spec, tmp_path, batch_size=4)  # 2 micro-batches a step: >= 20 ms of waiting per step
    for row in read_csv(spec, tmp_path):
        assert 0.02 <= float(row["data_wait_s"]) < float(row["step_time_s"])


def test_checkpoint_writes_are_left_out_of_the_step_time(tmp_path, monkeypatch):
    original = loop.save_checkpoint

    def slow_checkpoint(*args, **kwargs):
        time.sleep(1.0)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", slow_checkpoint)
    spec = tiny_spec(train_tokens=8 * 64 * 20, checkpoint_interval_steps=12)  # a checkpoint inside 10..15
    run_spec(spec, tmp_path, batch_size=8)
    row = next(r for r in read_csv(spec, tmp_path) if r["optimizer_step"] == "15")
    assert float(row["step_time_s"]) < 0.1  # 1 s over 5 steps would be >= 0.2
    assert float(row["elapsed_s"]) > 1.0


def test_a_csv_from_before_the_new_columns_resumes_with_them_empty(tmp_path):
    spec = tiny_spec(train_tokens=8 * 64 * 20)

    def stop_at_10(step, model):
        if step == 10:
            os.kill(os.getpid(), signal.SIGUSR2)

    with pytest.raises(RunInterrupted):
        run_spec(spec, tmp_path, batch_size=8, on_step=stop_at_10)
    path = RunPaths.of(spec.folder_name, spec.label, tmp_path).metrics_csv
    old_columns = loop.COLUMNS[:loop.COLUMNS.index("elapsed_s") + 1]
    rows = read_csv(spec, tmp_path)
    with open(path, "w", newline="") as handle:  # as the loop wrote it before these columns
        writer = csv.DictWriter(handle, old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    run_spec(spec, tmp_path, batch_size=8)
    rows = read_csv(spec, tmp_path)
    assert [r["optimizer_step"] for r in rows] == ["1", "5", "10", "15", "20"]
    assert all(r["mfu"] == r["ranks"] == "" for r in rows[:3])
    assert_rate_columns(rows[3:], spec, ranks=1, tokens_per_step=8 * 64)


# --------------------------------------------------------------- DDP (gloo)
def _ddp_rank(rank, root, spec_dict, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from orchestrator.spec import spec_from_dict

    loop.train(spec_from_dict(spec_dict), GPT, root=root, batch_size=4)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_data_parallel_ranks_log_all_ranks_rate_and_ranks_two(tmp_path):
    spec = tiny_spec(gpus=2, train_tokens=8 * 64 * 10)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_rank, args=(tmp_path, spec.to_dict(), port), nprocs=2)
    rows = read_csv(spec, tmp_path)
    assert [int(r["optimizer_step"]) for r in rows] == [1, 5, 10]
    assert_rate_columns(rows, spec, ranks=2, tokens_per_step=8 * 64)
