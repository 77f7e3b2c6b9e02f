"""The lmu_asr workload through the shared loop: its spec, its model, and training on synthetic
speech (espeak-ng): a few utterances learnt by heart, 2 gloo ranks = 1 rank with the same
effective batch, a SIGUSR2 resume that gives every step once and the same result, and a short CPU
run that recognises held-out utterances.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orchestrator.errors import UsageError
from orchestrator.paths import RunPaths, read_status
from test_lstm_ddp import REPO, assert_exited, launch, wait, weights, write_spec
from workloads.interrupt import EXIT_REQUEUE
from experiments.lmu_asr import ASR_CPU
from workloads.lmu_asr import SPEECH_MEAN_UTTERANCE_S, gen_lmu_asr_experim

pytestmark = pytest.mark.slow


def asr_spec(**fields):
    fields = {"hidden_dim": 64, "num_layers": 2, "memory_dim": 16, "memory_channels": 4, "frame_stack": 3,
              "label": "asr", "partition": "local", "target_effective_batch_size": 8, "train_hours": 8 * 20 * 2.5 / 3600,
              "learning_rate": 3e-3, "log_interval_steps": 1, "eval_interval_steps": 10, "eval_batches": 1,
              "checkpoint_interval_steps": 10 ** 6, "dropout": 0.0, **fields}
    return gen_lmu_asr_experim(**fields)[0]


def read_rows(spec, root):
    with open(RunPaths.of(spec.folder_name, spec.label, root).metrics_csv, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def corpus(data_cache):
    """The default synthetic corpus (1,000 + 200 utterances), built once for the module."""
    from workloads.lmu_asr.speech import build_speech_corpus

    return build_speech_corpus(1000, 200, cache=data_cache)


# ------------------------------------------------------------------------- spec and model
@pytest.mark.parametrize("fields", [
    {}, {"encoder": "lmu"}, {"bidirectional": True}, {"encoder": "lmu", "bidirectional": True, "memory_channels": 1},
    {"frame_stack": 1, "num_layers": 3, "hidden_dim": 48}])
def test_the_parameter_count_is_the_models(fields):
    from workloads.lmu_asr.model import SpeechRecognizer

    spec = asr_spec(**fields)
    assert sum(p.numel() for p in SpeechRecognizer(spec).parameters()) == spec.total_params
    assert spec.non_embedding_params < spec.total_params


def test_the_budget_is_hours_of_audio_and_d_counts_frames():
    spec = asr_spec(train_hours=1.0, target_effective_batch_size=16)
    assert spec.optimizer_steps == -(-3600 // (16 * SPEECH_MEAN_UTTERANCE_S))
    assert spec.tokens == spec.optimizer_steps * round(16 * SPEECH_MEAN_UTTERANCE_S * 100)
    assert spec.theta == pytest.approx(100 / 3)  # one second of audio at 30 ms a step
    with pytest.raises(UsageError, match="give mean_utterance_s for dataset '/data/librispeech'"):
        asr_spec(dataset="/data/librispeech")
    with pytest.raises(UsageError, match="unknown encoder 'lstm'"):
        asr_spec(encoder="lstm")
    with pytest.raises(UsageError, match="unknown experiment field 'seq_length'"):
        asr_spec(seq_length=128)


def test_the_pinned_mean_utterance_length_is_the_corpus(corpus, data_cache):
    from workloads.lmu_asr.train import load_data

    data = load_data(asr_spec(), data_cache)
    assert data.mean_utterance_s == pytest.approx(SPEECH_MEAN_UTTERANCE_S, rel=0.01)


# ------------------------------------------------------------------------------- training
def test_a_few_utterances_are_learnt_by_heart(tmp_path, data_cache):
    """CTC can fit: 8 training utterances, validated on themselves, to CER < 5 %."""
    from workloads.run import run

    spec = asr_spec(label="overfit", speech_train_utterances=8, speech_dev_utterances=2, val_subset="train",
                    spec_augment=False, hidden_dim=128, train_hours=250 * 8 * SPEECH_MEAN_UTTERANCE_S / 3600,
                    eval_interval_steps=250, log_interval_steps=50)
    status = run(write_spec(spec, tmp_path), root=tmp_path, data_cache=data_cache)
    assert status["state"] == "completed"
    last = read_rows(spec, tmp_path)[-1]
    print(f"8 utterances after {last['optimizer_step']} steps: CER {float(last['val_cer']):.3f}, "
          f"WER {float(last['val_wer']):.3f}, CTC {float(last['val_ctc_loss']):.3f}")
    assert float(last["val_cer"]) < 0.05, last


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, corpus, data_cache):
    """The reference: one process, the whole effective batch of 8 in one micro-batch."""
    from workloads.run import run

    spec, root = asr_spec(gpus=1), tmp_path_factory.mktemp("one")
    run(write_spec(spec, root), root=root, batch_size=8, data_cache=data_cache)
    return read_rows(spec, root), weights(spec, root)


def test_two_gloo_ranks_take_the_updates_of_one_rank_with_the_doubled_batch(tmp_path, data_cache, one_rank):
    spec = asr_spec()  # 2 ranks of 4 utterances = 1 rank of 8
    assert_exited(wait(launch(spec, tmp_path, data_cache, world=2), tmp_path), 0, tmp_path)
    rows, state = read_rows(spec, tmp_path), weights(spec, tmp_path)
    reference_rows, reference_state = one_rank
    assert [r["tokens_processed"] for r in rows] == [r["tokens_processed"] for r in reference_rows]
    loss = max(abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(rows, reference_rows))
    weight = max((state[k] - reference_state[k]).abs().max().item() for k in state)
    print(f"2 ranks vs 1: max loss difference {loss:.3g}, max weight difference {weight:.3g}")
    assert len(rows) == 20 and int(rows[-1]["ranks"]) == 2
    # each rank pads its half of the batch to its own longest utterance, so the LMUFFT's FFTs have
    # other lengths and round differently in float32 (~1e-7); Adam's normalised steps carry that
    # to ~1e-5 in the weights after 20 steps (the text workloads, with no padding, agree to 1e-6)
    assert loss < 1e-5 and weight < 5e-5
    assert float(rows[-1]["val_cer"]) == pytest.approx(float(reference_rows[-1]["val_cer"]), abs=1e-9)


def test_a_sigusr2_resume_gives_every_step_once_and_the_same_run(tmp_path, data_cache, one_rank):
    spec = asr_spec(train_hours=8 * 60 * SPEECH_MEAN_UTTERANCE_S / 3600, log_interval_steps=1)
    paths = RunPaths.of(spec.folder_name, spec.label, tmp_path)
    command = [sys.executable, "-m", "workloads.run", str(write_spec(spec, tmp_path)), "--results-dir", str(tmp_path)]
    env = {**os.environ, "ORCHESTRATOR_DATA_CACHE": str(data_cache), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (paths.metrics_csv.exists() and len(read_rows(spec, tmp_path)) >= 15):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()[0]
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR2)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == EXIT_REQUEUE, out
    stopped = read_status(paths)["optimizer_step"]
    assert 15 <= stopped < spec.optimizer_steps
    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = read_rows(spec, tmp_path)
    assert [int(r["optimizer_step"]) for r in rows] == list(range(1, spec.optimizer_steps + 1))

    from workloads.run import run

    straight = tmp_path / "straight"
    run(write_spec(spec, straight), root=straight, data_cache=data_cache)
    reference = read_rows(spec, straight)
    for a, b in zip(rows, reference):  # the resumed run is the uninterrupted one, step for step
        assert a["tokens_processed"] == b["tokens_processed"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-6)


def test_a_short_cpu_run_recognises_held_out_utterances(tmp_path, corpus, data_cache):
    """At most 3 minutes of one CPU process on 1,000 synthetic utterances: CER < 30 % on 200 others."""
    from workloads.run import run

    spec = gen_lmu_asr_experim(**ASR_CPU)[0].replace(label="cpu_run")
    started = time.monotonic()
    status = run(write_spec(spec, tmp_path), root=tmp_path, data_cache=data_cache)
    minutes = (time.monotonic() - started) / 60
    last = read_rows(spec, tmp_path)[-1]
    print(f"{spec.total_params:,} parameters, {spec.optimizer_steps} steps in {minutes:.1f} min: held-out CER "
          f"{float(last['val_cer']):.3f}, WER {float(last['val_wer']):.3f}")
    assert status["state"] == "completed" and minutes <= 3
    assert float(last["val_cer"]) < 0.30


def test_the_cpu_scaling_study_runs_end_to_end_and_fits_ctc_loss_against_n_and_d(tmp_path, corpus, data_cache):
    """``study LMU_ASR_SCALING_CPU``: 12 runs as a local array, their CSVs, and analyze's L(N, D)
    fit of the CTC loss with N the parameters and D the training frames."""
    env = {**os.environ, "ORCHESTRATOR_DATA_CACHE": str(data_cache)}
    out = subprocess.run([sys.executable, "-m", "orchestrator", "study", "LMU_ASR_SCALING_CPU", "--backend", "local",
                          "--bootstrap", "20"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "12 runs used" in out.stdout, out.stdout[-3000:]
    results = Path(os.environ["ORCHESTRATOR_RESULTS_DIR"])
    report = json.loads((results / "analysis" / "LMU_ASR_SCALING_CPU" / "report.json").read_text())
    runs = report["data"]["runs"]
    assert len(runs) == 12 and all(run["run"].startswith("lmu_asr_scaling_cpu/") for run in runs)
    for run in runs:  # D is the frames the CSVs counted: near the planned hours of audio
        hours = float(run["run"].rsplit("_", 1)[1].rstrip("h"))
        assert run["D"] == pytest.approx(hours * 360_000, rel=0.1)
        assert run["loss_source"] == "val"
    by_size = {}
    for run in runs:
        by_size.setdefault(run["N"], []).append((run["D"], run["loss"]))
    for points in by_size.values():  # more audio, lower CTC loss, at every size
        assert [loss for _, loss in sorted(points)] == sorted((loss for _, loss in points), reverse=True)
    fitted = report["approach3"]["parameters"]
    assert fitted["alpha"]["value"] > 0 and fitted["beta"]["value"] > 0
    print(out.stdout[-2500:])
