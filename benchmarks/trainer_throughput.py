"""Trainer throughput against a bare training loop of the same model and batch, in one process.

    python benchmarks/trainer_throughput.py                     # CPU: d=64, 2 layers, 16 x 128, 1 thread
    python benchmarks/trainer_throughput.py --width 512 --layers 8 --seq 1024 --batch 32 --steps 300   # a GPU
    python benchmarks/trainer_throughput.py --workload lstm --width 128            # the LSTM, hidden 128
    python benchmarks/trainer_throughput.py --workload lstm --width 128 --ranks 2  # + 2 DDP ranks (gloo/NCCL)
    python benchmarks/trainer_throughput.py --preset lingua27m --steps 100         # a GPU: issue 13's node scale

``--preset NAME`` sets defaults that explicit flags still override. ``lingua27m`` is the node-scale
shape of issue 13 (lingua's small config: d=512, 8 layers, 8 heads, T=2048, batch 8; bf16
autocast, as every CUDA run here) on ``miso``'s profile, whose peak the trainer's own MFU
column divides by; it is meant for a GPU, not the CPU.

The bare loop is nanoGPT's: random windows from the same token array, forward, backward,
clip, AdamW step. The trainer is ``workloads.run`` itself, timed over the same steps from its
step hook, so it includes batch addressing, the schedule, accounting and logging (not the
final evaluation). Both alternate ``--repeats`` times and the medians are compared; the
target ratio is >= 0.95. On the CPU, CPU time is printed beside wall time: other work on a
shared machine moves wall-clock rates by tens of percent between runs. On a GPU the MFU
counts ``spec.flops_per_token()`` (6 N + 12 L d T; 6 N for the LSTM) against the peak bf16 rate.
Under the ratios, the trainer's own metrics CSV (last repeat, rows after the warm-up, medians):
its MFU against the partition profile's peak, step time, data wait and peak memory.

``--ranks R`` also runs the trainer as R data-parallel processes (``python -m workloads.run``
with env:// variables, as the local backend starts them; on a GPU machine one GPU each),
every rank at ``--batch`` sequences, and reports the rate of all ranks together from rank 0's
CSV (``tokens_per_s`` of the logged intervals after the warm-up). On this 2-core CPU that
measures DDP's overhead, not a speed-up (the feasibility notes, section 5).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from orchestrator.spec import make_spec
from workloads.data import TokenData
from workloads.loop import make_optimizer, set_lr
from workloads.lstm.model import LSTMLM
from workloads.run import run
from workloads.transformer.model import GPT

MODELS = {"transformer": GPT, "lstm": LSTMLM}

# the model of a preset beyond its shape: lingua's (SwiGLU at its width, rotary, untied head; 27.5M)
PRESET_MODEL = {"lingua27m": dict(activation="swiglu", positional="rotary", tie_embeddings=False,
                                  mlp_hidden_dim=1536)}
PRESETS = {
    "lingua27m": dict(width=512, layers=8, heads=8, seq=2048, batch=8, partition="miso"),
}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0, "V100": 125.0}
WARMUP_STEPS = 10


class Clock:
    """Wall and CPU time (one thread on a shared CPU: CPU time is the steadier measure)."""

    def __init__(self, device):
        self.device = device

    def now(self) -> tuple[float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    @staticmethod
    def rates(tokens: int, start, end) -> tuple[float, float]:
        return tokens / (end[0] - start[0]), tokens / (end[1] - start[1])


def bare_loop(spec, data: TokenData, batch: int, steps: int, device) -> tuple[float, float]:
    """Tokens/s (wall, CPU) of the plainest loop that trains the same model on the same kind of batch."""
    torch.manual_seed(spec.seed)
    model = MODELS[spec.workload](spec).to(device)
    optimizer = make_optimizer(spec, model, device)
    set_lr(optimizer, spec.learning_rate)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    tokens = torch.from_numpy(data.train.astype("int64"))
    T, clock = spec.seq_length, Clock(device)

    for step in range(1, steps):
        if step == WARMUP_STEPS:
            start = clock.now()
        ix = torch.randint(len(tokens) - T - 1, (batch,))
        xy = torch.stack([tokens[i:i + T + 1] for i in ix]).to(device, non_blocking=True)
        with autocast:
            loss = model(xy[:, :-1], xy[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return clock.rates((steps - WARMUP_STEPS) * batch * T, start, clock.now())


def trainer(spec, batch: int, steps: int, device, data_cache) -> tuple[tuple[float, float], list[dict]]:
    """Tokens/s (wall, CPU) of ``workloads.run`` between the same steps as the bare loop, and
    the rows of its metrics CSV.

    Timed from its step hook: after step WARMUP_STEPS - 1 to after step steps - 1, which
    includes its logging (every 10 steps) but not its final evaluation and checkpoint.
    """
    clock, marks = Clock(device), {}

    def on_step(step, model):
        if step in (WARMUP_STEPS - 1, steps - 1):
            marks[step] = clock.now()

    with tempfile.TemporaryDirectory() as root:
        spec_path = Path(root) / "spec.json"
        spec_path.write_text(json.dumps(spec.to_dict()))
        run(spec_path, root=root, batch_size=batch, grad_accum=1, device=device, data_cache=data_cache,
            on_step=on_step)
        with open(Path(root) / spec.folder_name / f"{spec.label}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    rates = clock.rates((steps - WARMUP_STEPS) * batch * spec.seq_length, marks[WARMUP_STEPS - 1], marks[steps - 1])
    return rates, rows


def csv_summary(rows: list[dict]) -> str:
    """The trainer's own per-interval metrics after the warm-up, as medians (the last row,
    which includes the final evaluation's memory, is left out)."""
    rows = [r for r in rows if WARMUP_STEPS < int(r["optimizer_step"]) and not r["val_loss"]]
    if not rows:
        return "trainer's CSV: no logged rows after the warm-up"

    def median(key):
        values = [float(r[key]) for r in rows if r.get(key, "") != ""]
        return statistics.median(values) if values else None

    step, wait = median("step_time_s"), median("data_wait_s")
    memory = (f"peak memory {median('peak_mem_allocated_gb'):.2f} GB allocated, "
              f"{median('peak_mem_reserved_gb'):.2f} GB reserved" if median("peak_mem_allocated_gb") is not None
              else f"peak RSS {median('peak_rss_gb'):.2f} GB")
    return (f"trainer's CSV ({len(rows)} rows after step {WARMUP_STEPS}, medians): MFU {median('mfu'):.2%} "
            f"(profile peak), {median('tokens_per_s_per_gpu'):,.0f} tok/s per GPU, step {step * 1e3:.1f} ms, "
            f"data wait {wait * 1e3:.2f} ms ({wait / step:.1%}), {memory}")


def data_parallel(spec, ranks: int, batch: int, steps: int, device, data_cache) -> float:
    """Tokens/s of all ``ranks`` together: the median of rank 0's logged rates after WARMUP_STEPS."""
    spec = spec.replace(gpus=ranks, target_effective_batch_size=batch * ranks,
                        train_tokens=steps * batch * ranks * spec.seq_length)
    with tempfile.TemporaryDirectory() as root:
        spec_path = Path(root) / "spec.json"
        spec_path.write_text(json.dumps(spec.to_dict()))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "WORLD_SIZE": str(ranks), "LOCAL_WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        if device.type == "cpu":
            env.update(OMP_NUM_THREADS=str(torch.get_num_threads()), MKL_NUM_THREADS=str(torch.get_num_threads()))
        if data_cache:
            env["ORCHESTRATOR_DATA_CACHE"] = str(data_cache)
        processes = [subprocess.Popen([sys.executable, "-m", "workloads.run", str(spec_path), "--results-dir", root],
                                      env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                      stdout=subprocess.DEVNULL)
                     for r in range(ranks)]
        codes = [p.wait() for p in processes]
        metrics = Path(root) / spec.folder_name / f"{spec.label}.csv"
        if not metrics.exists():
            raise SystemExit(f"the {ranks}-rank run wrote no metrics (exit codes {codes})")
        with open(metrics, newline="") as handle:
            rates = [float(r["tokens_per_s"]) for r in csv.DictReader(handle)
                     if int(r["optimizer_step"]) > WARMUP_STEPS and not r["val_loss"]]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="defaults for a named shape (explicit flags override them)")
    parser.add_argument("--workload", choices=sorted(MODELS), default="transformer")
    parser.add_argument("--width", type=int, default=64, help="the transformer's width or the LSTM's hidden size")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=None, help="the transformer's heads (default: its rule)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: two threads on two shared cores are erratic)")
    parser.add_argument("--partition", default="local")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s (default: by GPU name)")
    parser.add_argument("--data-cache", default=None)
    parser.add_argument("--ranks", type=int, default=1, help="also time the trainer as this many DDP processes")
    preset = parser.parse_known_args()[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps, got {args.steps}")

    torch.set_num_threads(args.threads)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    shape = {"num_heads": args.heads} if args.heads and args.workload == "transformer" else {}
    shape.update(PRESET_MODEL.get(preset, {}) if args.workload == "transformer" else {})
    spec = make_spec(args.workload, hidden_dim=args.width, num_layers=args.layers, seq_length=args.seq, **shape,
                     label="throughput", folder_name="benchmark", partition=args.partition, gpus=1,
                     target_effective_batch_size=args.batch, train_tokens=args.steps * args.batch * args.seq,
                     eval_interval_steps=args.steps, log_interval_steps=10, checkpoint_interval_steps=10 ** 9)
    data = TokenData.for_spec(spec, args.data_cache)  # tokenised once, outside the timings
    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(spec, data, args.batch, args.steps, device))
        rates, rows = trainer(spec, args.batch, args.steps, device, args.data_cache)
        ours.append(rates)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} thread)"
    print(f"device {name}; {args.workload} d={args.width} L={args.layers} T={args.seq} batch={args.batch}; "
          f"{spec.total_params:,} params; {args.steps} steps x {args.repeats} repeats")
    clocks = ["wall"] if device.type == "cuda" else ["wall", "cpu"]  # CPU time means nothing on a GPU
    for i, clock in enumerate(clocks):
        b, o = [x[i] for x in bare], [x[i] for x in ours]
        pairs = sorted(y / x for x, y in zip(b, o))
        print(f"{clock:>4} time: bare {statistics.median(b):,.0f} tok/s ({', '.join(f'{x:,.0f}' for x in b)}); "
              f"trainer {statistics.median(o):,.0f} tok/s ({', '.join(f'{x:,.0f}' for x in o)})")
        print(f"{clock:>4} time: ratio trainer / bare {statistics.median(o) / statistics.median(b):.3f} "
              f"(paired: {', '.join(f'{r:.3f}' for r in pairs)}; target >= 0.95)")
    print(csv_summary(rows))
    bare_tps, ours_tps = statistics.median(x[0] for x in bare), statistics.median(x[0] for x in ours)
    if device.type == "cuda":
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        flops_per_token = spec.flops_per_token()
        if peak:
            print(f"MFU: trainer {ours_tps * flops_per_token / (peak * 1e12):.1%}, "
                  f"bare {bare_tps * flops_per_token / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s bf16")
        else:
            print("MFU: unknown peak for this GPU; pass --peak-tflops")
    if args.ranks > 1:
        together = [data_parallel(spec, args.ranks, args.batch, args.steps, device, args.data_cache)
                    for _ in range(args.repeats)]
        print(f"wall time: trainer with {args.ranks} DDP ranks x batch {args.batch}: "
              f"{statistics.median(together):,.0f} tok/s all ranks ({', '.join(f'{x:,.0f}' for x in together)}); "
              f"{statistics.median(together) / ours_tps:.2f}x one process")


if __name__ == "__main__":
    main()
