"""The LSTM trained by 2 data-parallel gloo ranks on the CPU, each rank a ``python -m workloads.run``
process with torch.distributed's env:// variables, as ``orchestrator.task`` starts them.

Results are read from what rank 0 wrote, not only from exit codes: a gloo rank can abort in
teardown after its work is done (SIGABRT, ~4 % of runs in the feasibility notes, §5).
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.paths import RunPaths, read_status
from orchestrator.spec import make_spec
from workloads.data import ByteTokenizer, load_tokens
from workloads.interrupt import EXIT_REQUEUE
from workloads.loop import latest_checkpoint
from workloads.lstm.model import LSTMLM
from workloads.run import run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TEARDOWN_ABORT = -signal.SIGABRT  # "terminate called without an active exception" after the work is done


def lstm_spec(**fields):
    fields = {"hidden_dim": 32, "seq_length": 32, "label": "lstm_ddp", "partition": "local", "gpus": 2,
              "target_effective_batch_size": 8, "train_tokens": 8 * 32 * 40, "learning_rate": 1e-2,
              "log_interval_steps": 5, "eval_interval_steps": 20, "eval_batches": 2,
              "checkpoint_interval_steps": 10 ** 6, **fields}
    return make_spec("lstm", **fields)


def write_spec(spec, root: Path) -> Path:
    path = root / "specs" / f"{spec.label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.to_dict()))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(spec, root: Path, data_cache: Path, world: int = 2,
           python_code: str | None = None) -> list[subprocess.Popen]:
    """``world`` rank processes of ``python -m workloads.run SPEC --results-dir ROOT`` (or of ``python_code``)."""
    spec_path = write_spec(spec, root)
    env = {**os.environ, "ORCHESTRATOR_DATA_CACHE": str(data_cache), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "WORLD_SIZE": str(world),
           "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    command = ([sys.executable, "-c", python_code, str(spec_path), str(root)] if python_code
               else [sys.executable, "-m", "workloads.run", str(spec_path), "--results-dir", str(root)])
    processes = []
    for rank in range(world):
        log = open(root / f"rank{rank}.log", "ab")
        processes.append(subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                          env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
        log.close()
    return processes


def wait(processes, root: Path, timeout_s: float = 180) -> list[int]:
    deadline = time.monotonic() + timeout_s
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank hung past {timeout_s} s:\n{logs(root)}")
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(root.glob("rank*.log")))


def assert_exited(codes, expected: int, root: Path) -> None:
    assert all(code in (expected, TEARDOWN_ABORT) for code in codes), f"exit codes {codes}:\n{logs(root)}"


def read_rows(spec, root: Path) -> list[dict]:
    with open(RunPaths.of(spec.folder_name, spec.label, root).metrics_csv, newline="") as handle:
        return list(csv.DictReader(handle))


def weights(spec, root: Path) -> dict:
    path = latest_checkpoint(RunPaths.of(spec.folder_name, spec.label, root))
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(autouse=True)
def tokenised(data_cache):
    """Tokenise the corpus once, here, rather than in two racing rank processes."""
    load_tokens("shakespeare", ByteTokenizer(), data_cache)


# ------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def shakespeare_run(tmp_path_factory, data_cache):
    root = tmp_path_factory.mktemp("ddp")
    spec = lstm_spec(train_tokens=8 * 32 * 150, eval_interval_steps=30, log_interval_steps=10, learning_rate=2e-2)
    load_tokens("shakespeare", ByteTokenizer(), data_cache)
    codes = wait(launch(spec, root, data_cache), root)
    return spec, root, codes


def test_two_gloo_ranks_train_the_lstm_on_shakespeare(shakespeare_run):
    spec, root, codes = shakespeare_run
    assert_exited(codes, 0, root)
    rows = read_rows(spec, root)
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    print(f"loss {rows[0]['loss']} -> {rows[-1]['loss']}; val {val}")
    assert float(rows[0]["loss"]) == pytest.approx(np.log(256), abs=0.3)
    assert val[-1] < val[0] - 0.3 and val[-1] < 3.0  # the unigram entropy of the text is 3.33 nats
    assert read_status(RunPaths.of(spec.folder_name, spec.label, root))["state"] == "completed"


def test_rank_zero_writes_one_csv_whose_tokens_count_both_ranks(shakespeare_run):
    spec, root, codes = shakespeare_run
    paths = RunPaths.of(spec.folder_name, spec.label, root)
    assert sorted(p.name for p in paths.folder.iterdir()) == sorted(
        [paths.metrics_csv.name, paths.config_json.name, paths.run_dir.name])
    rows = read_rows(spec, root)
    steps = [int(r["optimizer_step"]) for r in rows]
    assert steps == [1] + list(range(10, 151, 10))  # each once: one writer
    for row in rows:  # 2 ranks x 4 sequences x 32 tokens per step
        assert int(row["tokens_processed"]) == int(row["optimizer_step"]) * 2 * 4 * 32
        assert int(row["theoretical_flops_chinchilla"]) == 6 * spec.total_params * int(row["tokens_processed"])
    assert int(rows[-1]["tokens_processed"]) == spec.tokens == read_status(paths)["tokens_processed"]
    plan = json.loads(paths.config_json.read_text())["plan"]
    assert (plan["batch_size"], plan["grad_accum"], plan["data_parallel"]) == (4, 1, 2)
    assert "step 150/150" in (root / "rank0.log").read_text()
    assert "step 150/150" not in (root / "rank1.log").read_text()


# --------------------------------------------------------------- equivalence
def test_two_ranks_of_batch_b_take_the_same_updates_as_one_rank_of_batch_2b(tmp_path, data_cache):
    # adam_eps=1 makes AdamW's first updates ~ lr * gradient instead of lr * sign(gradient),
    # so the weights show the gradient itself, not only its signs
    spec = lstm_spec(train_tokens=8 * 32 * 3, log_interval_steps=1, adam_eps=1.0, grad_clip=None,
                     eval_interval_steps=3, learning_rate=0.5)
    assert_exited(wait(launch(spec, tmp_path / "ddp", data_cache), tmp_path / "ddp"), 0, tmp_path / "ddp")
    run(write_spec(spec, tmp_path / "one"), root=tmp_path / "one", batch_size=8)  # 1 rank, batch 2B, no accumulation
    ddp_rows, one_rows = read_rows(spec, tmp_path / "ddp"), read_rows(spec, tmp_path / "one")
    assert [r["optimizer_step"] for r in ddp_rows] == [r["optimizer_step"] for r in one_rows] == ["1", "2", "3"]
    for a, b in zip(ddp_rows, one_rows):
        assert a["tokens_processed"] == b["tokens_processed"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-6)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-5)
    torch.manual_seed(spec.seed)
    initial = LSTMLM(spec).state_dict()
    ddp, one = weights(spec, tmp_path / "ddp"), weights(spec, tmp_path / "one")
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    deviation = max((ddp[k] - one[k]).abs().max().item() for k in one)
    print(f"largest weight change {moved:.3g}; largest 2-rank vs 1-rank difference {deviation:.3g}")
    assert moved > 1e-3 and deviation < 1e-5

    # what two ranks reading the same samples would give: clearly different
    same_data = spec.replace(target_effective_batch_size=4, train_tokens=4 * 32 * 3, gpus=1)
    run(write_spec(same_data, tmp_path / "half"), root=tmp_path / "half", batch_size=4)
    half = weights(same_data, tmp_path / "half")
    assert max((half[k] - one[k]).abs().max().item() for k in one) > 100 * max(deviation, 1e-7)


# ------------------------------------------------------------------- faults
def test_two_ranks_resume_after_sigusr2_with_every_step_once(tmp_path, data_cache):
    spec = lstm_spec(train_tokens=8 * 32 * 200, eval_interval_steps=50)
    root = tmp_path / "stopped"
    processes = launch(spec, root, data_cache)
    paths = RunPaths.of(spec.folder_name, spec.label, root)
    deadline = time.monotonic() + 120
    while not (paths.metrics_csv.exists() and len(paths.metrics_csv.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), logs(root)
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGUSR2)  # one rank only: the ranks agree on a step to stop at
    assert_exited(wait(processes, root), EXIT_REQUEUE, root)
    status = read_status(paths)
    stopped = status["optimizer_step"]
    assert status["state"] == "interrupted" and status["interrupted_by"] == "SIGUSR2" and 5 <= stopped < 200
    assert latest_checkpoint(paths).name == f"step_{stopped:08d}.pt"

    assert_exited(wait(launch(spec, root, data_cache), root), 0, root)
    assert read_status(paths)["state"] == "completed"
    rows = read_rows(spec, root)
    assert [int(r["optimizer_step"]) for r in rows] == [1] + list(range(5, 201, 5))
    assert f"resumed at step {stopped}" in (root / "rank0.log").read_text()

    # the resumed curve is the uninterrupted one (one process with the whole batch, 2B)
    run(write_spec(spec, tmp_path / "whole"), root=tmp_path / "whole", batch_size=8)
    for a, b in zip(rows, read_rows(spec, tmp_path / "whole")):
        assert a["tokens_processed"] == b["tokens_processed"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-4)


FAIL_ON_RANK_1 = """
import os, sys
from workloads.run import run

def lose_rank_1(step, model):
    if step == 3 and os.environ["RANK"] == "1":
        raise RuntimeError("rank 1 lost its node")

run(sys.argv[1], root=sys.argv[2], on_step=lose_rank_1)
"""


def test_a_rank_that_fails_takes_the_other_down_instead_of_leaving_it_hanging(tmp_path, data_cache):
    spec = lstm_spec()
    codes = wait(launch(spec, tmp_path, data_cache, python_code=FAIL_ON_RANK_1), tmp_path, timeout_s=120)
    assert all(code != 0 for code in codes), codes
    assert "rank 1 lost its node" in (tmp_path / "rank1.log").read_text()
    status = read_status(RunPaths.of(spec.folder_name, spec.label, tmp_path))
    assert status["state"] == "failed" and status["optimizer_step"] == 3
