"""A tiny transformer trained by 2 and 4 data-parallel gloo ranks on the CPU, with DDP and with
FSDP2 (``fsdp="full_shard"``, ``"no_shard"``): every mode takes the updates of one rank with the
same effective batch, and a sharded run resumes from its one-file checkpoint as if never stopped.

Ranks are ``python -m workloads.run`` processes started as ``tests/test_lstm_ddp.py`` starts them.
"""

import pytest
import torch

from orchestrator.paths import RunPaths, read_status
from orchestrator.spec import make_spec
from test_lstm_ddp import assert_exited, launch, logs, read_rows, wait, weights, write_spec
from workloads.data import TokenData
from workloads.interrupt import EXIT_REQUEUE
from workloads.loop import latest_checkpoint
from workloads.run import run
from workloads.transformer.model import GPT

pytestmark = pytest.mark.slow

STEPS = 20


def tiny_spec(**fields):
    # log every step: the CSV holds the loss and gradient norm of each of the 20 steps
    fields = {"hidden_dim": 32, "num_layers": 2, "num_heads": 2, "seq_length": 32, "label": "tiny_dp",
              "partition": "local", "target_effective_batch_size": 8, "train_tokens": 8 * 32 * STEPS,
              "learning_rate": 3e-3, "log_interval_steps": 1, "eval_interval_steps": 10, "eval_batches": 1,
              "checkpoint_interval_steps": 10 ** 6, **fields}
    return make_spec("transformer", **fields)


@pytest.fixture(autouse=True)
def tokenised(data_cache):
    """Tokenise the corpus once, here, rather than in racing rank processes."""
    TokenData.for_spec(tiny_spec(), data_cache)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, data_cache):
    """The reference: one process, the whole effective batch of 8 in one micro-batch."""
    spec, root = tiny_spec(gpus=1), tmp_path_factory.mktemp("one")
    TokenData.for_spec(spec, data_cache)
    run(write_spec(spec, root), root=root, batch_size=8, data_cache=data_cache)
    return read_rows(spec, root), weights(spec, root)


def differences(rows, reference_rows, state, reference_state) -> tuple[float, float]:
    """Largest per-step loss difference and largest final-weight difference.

    The gradient norms (before clipping at 1.0; FSDP2 computes them from DTensor shards) agree too.
    """
    assert [r["optimizer_step"] for r in rows] == [r["optimizer_step"] for r in reference_rows]
    assert [r["tokens_processed"] for r in rows] == [r["tokens_processed"] for r in reference_rows]
    assert state.keys() == reference_state.keys()
    for a, b in zip(rows, reference_rows):
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-5)
    loss = max(abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(rows, reference_rows))
    weight = max((state[k] - reference_state[k]).abs().max().item() for k in state)
    return loss, weight


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("fsdp", ["none", "full_shard", "no_shard"])
def test_data_parallel_ranks_take_the_updates_of_one_rank_with_the_same_batch(fsdp, world, tmp_path, data_cache,
                                                                             one_rank):
    spec = tiny_spec(fsdp=fsdp)  # the ranks are WORLD_SIZE, not gpus (the local profile has 2)
    assert_exited(wait(launch(spec, tmp_path, data_cache, world=world), tmp_path), 0, tmp_path)
    assert read_status(RunPaths.of(spec.folder_name, spec.label, tmp_path))["state"] == "completed"
    rows, state = read_rows(spec, tmp_path), weights(spec, tmp_path)
    reference_rows, reference_state = one_rank
    loss, weight = differences(rows, reference_rows, state, reference_state)
    torch.manual_seed(spec.seed)
    moved = max((state[k] - v).abs().max().item() for k, v in GPT(spec).state_dict().items())
    print(f"fsdp={fsdp} x {world} ranks vs 1 rank: max loss difference {loss:.3g}, "
          f"max weight difference {weight:.3g} (largest weight change {moved:.3g})")
    assert len(rows) == STEPS and int(rows[-1]["ranks"]) == world
    assert ("DDP" if fsdp == "none" else f"FSDP2 {fsdp}") in (tmp_path / "rank0.log").read_text()
    assert moved > 1e-2
    assert loss < 1e-5 and weight < 1e-5


ACCUMULATE_2 = """
import sys
from workloads.run import run

run(sys.argv[1], root=sys.argv[2], batch_size=2)  # 2 ranks x 2 micro-batches of 2
"""


@pytest.mark.parametrize("fsdp", ["none", "full_shard", "no_shard"])
def test_ranks_that_accumulate_micro_batches_sync_gradients_once_per_step(fsdp, tmp_path, data_cache, one_rank):
    spec = tiny_spec(fsdp=fsdp)
    assert_exited(wait(launch(spec, tmp_path, data_cache, python_code=ACCUMULATE_2), tmp_path), 0, tmp_path)
    assert "batch 2 x accum 2 x 2 ranks" in (tmp_path / "rank0.log").read_text()
    loss, weight = differences(read_rows(spec, tmp_path), one_rank[0], weights(spec, tmp_path), one_rank[1])
    print(f"fsdp={fsdp} x 2 ranks x 2 micro-batches vs 1 rank: max loss difference {loss:.3g}, "
          f"max weight difference {weight:.3g}")
    assert loss < 1e-5 and weight < 1e-5


STOP_AFTER_STEP_10 = """
import os, signal, sys
from workloads.interrupt import EXIT_REQUEUE, RunInterrupted
from workloads.run import run

def stop(step, model):
    if step == 10 and os.environ["RANK"] == "0":
        os.kill(os.getpid(), signal.SIGUSR2)

try:
    run(sys.argv[1], root=sys.argv[2], on_step=stop)
except RunInterrupted:
    sys.exit(EXIT_REQUEUE)
"""


def test_a_full_shard_run_resumes_from_its_checkpoint_as_if_never_stopped(tmp_path, data_cache, one_rank):
    spec = tiny_spec(fsdp="full_shard", gpus=2)
    paths = RunPaths.of(spec.folder_name, spec.label, tmp_path)
    codes = wait(launch(spec, tmp_path, data_cache, python_code=STOP_AFTER_STEP_10), tmp_path)
    assert_exited(codes, EXIT_REQUEUE, tmp_path)
    assert read_status(paths)["state"] == "interrupted"
    checkpoint = latest_checkpoint(paths)
    assert checkpoint.name == "step_00000010.pt"
    saved = torch.load(checkpoint, weights_only=True)  # one file, plain tensors: a 1-rank model loads it
    GPT(spec).load_state_dict(saved["model"])
    assert all(isinstance(v, torch.Tensor) and type(v) is torch.Tensor for v in saved["model"].values())

    assert_exited(wait(launch(spec, tmp_path, data_cache), tmp_path), 0, tmp_path)
    assert read_status(paths)["state"] == "completed"
    assert "resumed at step 10" in (tmp_path / "rank0.log").read_text(), logs(tmp_path)
    loss, weight = differences(read_rows(spec, tmp_path), one_rank[0], weights(spec, tmp_path), one_rank[1])
    print(f"full_shard x 2 stopped at 10 and resumed vs 1 rank uninterrupted: max loss difference {loss:.3g}, "
          f"max weight difference {weight:.3g}")
    assert loss < 1e-5 and weight < 1e-5


def test_a_one_rank_run_resumes_a_full_shard_checkpoint(tmp_path, data_cache, one_rank):
    spec = tiny_spec(fsdp="full_shard", gpus=2)
    codes = wait(launch(spec, tmp_path, data_cache, python_code=STOP_AFTER_STEP_10), tmp_path)
    assert_exited(codes, EXIT_REQUEUE, tmp_path)
    run(write_spec(spec.replace(gpus=1), tmp_path), root=tmp_path, batch_size=8, data_cache=data_cache)
    loss, weight = differences(read_rows(spec, tmp_path), one_rank[0], weights(spec, tmp_path), one_rank[1])
    print(f"full_shard x 2 stopped at 10, resumed by 1 rank: max loss difference {loss:.3g}, "
          f"max weight difference {weight:.3g}")
    assert loss < 1e-5 and weight < 1e-5


def test_a_compiled_full_shard_run_times_its_compilation_apart(tmp_path, data_cache):
    spec = tiny_spec(fsdp="full_shard", compile=True, train_tokens=8 * 32 * 6)
    assert_exited(wait(launch(spec, tmp_path / "compiled", data_cache), tmp_path / "compiled", timeout_s=400),
                  0, tmp_path / "compiled")
    status = read_status(RunPaths.of(spec.folder_name, spec.label, tmp_path / "compiled"))
    rows = read_rows(spec, tmp_path / "compiled")
    assert status["state"] == "completed" and status["compile_s"] > 0
    assert "compiled; first step took" in (tmp_path / "compiled" / "rank0.log").read_text()
    # step 1 compiled: its row has no rates; later rows time the compiled steps only
    assert rows[0]["tokens_per_s"] == rows[0]["mfu"] == rows[0]["step_time_s"] == ""
    assert all(float(r["step_time_s"]) < status["compile_s"] / 10 for r in rows[1:])

    plain = spec.replace(compile=False)  # the same experiment: compile is not in the identity
    run(write_spec(plain, tmp_path / "plain"), root=tmp_path / "plain", batch_size=8, data_cache=data_cache)
    for a, b in zip(rows, read_rows(plain, tmp_path / "plain")):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-4)  # other kernels, other rounding
