"""How well the LMU + CTC recogniser learns on a CPU: held-out CER and WER against training minutes.

    python benchmarks/asr_cpu.py                          # the default: ~20 min on 2 cores
    python benchmarks/asr_cpu.py --hours 5 --utterances 1000 --width 128 --layers 2   # quick look
    python benchmarks/asr_cpu.py --baseline               # also ASR_CPU (the test's 3-minute config)

Trains one ``lmu_asr`` spec with the real trainer (``workloads.run``, this process, ``--threads``
threads) on the synthetic ``speech`` corpus (espeak-ng: ``--utterances`` training utterances, 200
held out, the same 8 voices), evaluating every ``--eval-every`` steps, and prints each evaluation:
minutes of training (the trainer's ``elapsed_s``: evaluations included), hours of audio seen, the
held-out CTC loss, CER and WER (greedy decoding, no language model). ``--baseline`` trains
``experiments.lmu_asr.ASR_CPU`` on the same corpus for as long and prints the ratio of the
CERs at the end, both measured in this run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.lmu_asr import ASR_CPU  # noqa: E402
from orchestrator.paths import RunPaths, atomic_write_json  # noqa: E402
from workloads.lmu_asr import gen_lmu_asr_experim  # noqa: E402


def train(spec, root: Path) -> tuple[list[dict], float]:
    from workloads.run import run

    paths = RunPaths.of(spec.folder_name, spec.label, root)
    atomic_write_json(paths.spec_json, {"spec": spec.to_dict()})
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        run(str(paths.spec_json), root=root)
    wall = time.monotonic() - started
    with open(paths.metrics_csv, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["val_cer"]], wall


def report(spec, rows: list[dict], wall: float) -> None:
    print(f"{spec.label}: {spec.total_params:,} parameters ({spec.encoder}, {spec.num_layers} x {spec.hidden_dim}, "
          f"memory {spec.memory_channels} x {spec.memory_dim}, stack {spec.frame_stack}, "
          f"{'bidirectional' if spec.bidirectional else 'causal'}), {spec.optimizer_steps} steps of "
          f"{spec.target_effective_batch_size} utterances, {wall / 60:.1f} min in all")
    print(f"{'minutes':>8} {'step':>6} {'hours':>6} {'val CTC':>8} {'CER':>6} {'WER':>6}")
    for r in rows:
        print(f"{float(r['elapsed_s']) / 60:8.2f} {int(r['optimizer_step']):6d} "
              f"{int(r['tokens_processed']) / 360_000:6.2f} {float(r['val_ctc_loss']):8.3f} "
              f"{float(r['val_cer']):6.3f} {float(r['val_wer']):6.3f}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=60.0, help="hours of audio to train on (default 60)")
    parser.add_argument("--utterances", type=int, default=4000, help="synthetic training utterances (default 4000)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--memory", type=int, default=64, help="memory order d")
    parser.add_argument("--channels", type=int, default=4, help="memory channels (the dimension of u)")
    parser.add_argument("--stack", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--baseline", action="store_true", help="also train ASR_CPU as long, for the CER ratio")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    root = args.results_dir or Path(tempfile.mkdtemp(prefix="asr_cpu."))
    common = dict(speech_train_utterances=args.utterances, partition="local", folder_name="asr_cpu_benchmark")
    spec = gen_lmu_asr_experim(args.width, label="benchmark", num_layers=args.layers, memory_dim=args.memory,
                               memory_channels=args.channels, frame_stack=args.stack, encoder="lmufft",
                               bidirectional=True, dropout=0.1, target_effective_batch_size=args.batch,
                               learning_rate=args.lr, train_hours=args.hours, eval_interval_steps=args.eval_every,
                               eval_batches=25, log_interval_steps=100, checkpoint_interval_steps=10 ** 6,
                               **common)[0]
    print(f"results in {root}; {args.threads} threads; corpus: {args.utterances} synthetic training utterances, "
          f"200 held out (built on first use)")
    rows, wall = train(spec, root)
    report(spec, rows, wall)
    if args.baseline:
        steps_per_s = spec.optimizer_steps / wall
        base = gen_lmu_asr_experim(**{**ASR_CPU, **common, "label": "baseline", "train_hours": ASR_CPU["train_hours"]})[0]
        # as long as the benchmark: scale its budget by a short measurement of its speed
        probe_rows, probe_wall = train(base, root / "probe")
        hours = ASR_CPU["train_hours"] * wall / probe_wall
        base = base.replace(train_hours=hours, eval_interval_steps=args.eval_every)
        base_rows, base_wall = train(base, root)
        report(base, base_rows, base_wall)
        ratio = float(rows[-1]["val_cer"]) / float(base_rows[-1]["val_cer"])
        print(f"CER ratio benchmark / ASR_CPU at {wall / 60:.1f} vs {base_wall / 60:.1f} min: {ratio:.3f} "
              f"(benchmark {steps_per_s:.1f} steps/s)")


if __name__ == "__main__":
    main()
