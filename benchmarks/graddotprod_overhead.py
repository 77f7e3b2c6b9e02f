"""GradDotProd's cost per optimizer step against regular training of the same model, in one process.

    python benchmarks/graddotprod_overhead.py                  # CPU, 1 thread: d=128, 4 layers, T=256, 16 + 2 rows
    python benchmarks/graddotprod_overhead.py --repeats 15 --threads 2
    python benchmarks/graddotprod_overhead.py --device cuda --d 768 --layers 12 --heads 12 --seq 1024 \\
        --steps 20                                             # a GPU, bf16 autocast: GPT-2 small's shape

Three loops train their own copy of the same model (same initialisation) on the same
Shakespeare windows (``TokenData.train_batch``; validation rows from ``val_stream``), with
clipping and the loop's AdamW (``make_optimizer``), as ``workloads/loop.py`` steps with one
micro-step:

- ``regular``: ``model(idx, targets)``, the mean over the training tokens; backward.
- ``+val rows``: the concatenated ``[train; val]`` batch, ``per_row`` losses, train mean + val
  mean, backward; no engine: what the extra rows alone cost, a lower bound for GradDotProd.
- ``graddot``: the same inside ``GradDot.step(n, m)``, then ``finish()`` (the dots, and ``.grad``
  left with the training rows' gradient).

The loops alternate in blocks of ``--steps`` steps, ``--repeats`` times (the order rotates each
repeat), after ``--warmup`` steps each that are not timed (the engine verifies its hooks on its
first step). Reported: median steps/s per loop over the blocks, the overhead
``t_graddot / t_regular - 1`` from the medians and from each repeat's pair, and where a step's
time goes (forward, backward, ``finish()``, clip + optimizer; medians over the timed steps),
with graddot's phases less those of ``+val rows``: the engine's own cost. In steady state the
engine takes each parameter's dots inside backward, as its gradients arrive, so most of it
shows under backward, not ``finish()``. On the CPU the phases come from the timed blocks
themselves; on a GPU, where timing a phase needs a synchronisation that would also slow the
timed blocks, from one more block per loop.

One CPU thread by default (the local backend gives each of its parallel runs a share of the
cores): two threads on two shared cores wait for each other whenever other work holds one
core, and a GEMM then takes 2-3x as long. On a shared CPU other work moves wall-clock rates by
tens of percent: compare the ratios of one run, not rates across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from orchestrator.spec import make_spec
from workloads.data import TokenData
from workloads.graddot import GradDot
from workloads.loop import make_optimizer, set_lr
from workloads.transformer.model import GPT

LOOPS = ("regular", "+val rows", "graddot")
PHASES = ("forward", "backward", "finish", "optimizer")


class Loop:
    """One of the three training loops, with its own model and optimizer."""

    def __init__(self, name, spec, device, dtype, batches):
        torch.manual_seed(spec.seed)
        self.name, self.device, self.batches, self.clip = name, device, batches, spec.grad_clip
        self.model = GPT(spec).to(device)
        self.optimizer = make_optimizer(spec, self.model, device)
        set_lr(self.optimizer, spec.learning_rate)
        self.params = list(self.model.parameters())
        self.engine = GradDot(self.model) if name == "graddot" else None
        self.autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                         else contextlib.nullcontext())
        self.step_count = 0
        self.phases: dict[str, list[float]] = {p: [] for p in PHASES}

    def _now(self, sync):
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step(self, record: bool, sync: bool):
        train, val = self.batches[self.step_count % len(self.batches)]
        self.step_count += 1
        n, m = train.shape[0], val.shape[0]
        t0 = self._now(sync)
        if self.name == "regular":
            with self.autocast:
                loss = self.model(train[:, :-1], train[:, 1:])
        else:
            both = torch.cat([train, val])
            recording = self.engine.step(n, m) if self.engine else contextlib.nullcontext()
            with recording, self.autocast:
                rows = self.model(both[:, :-1], both[:, 1:], per_row=True)
            loss = rows[:n].mean() + rows[n:].mean()
        t1 = self._now(sync)
        loss.backward()
        t2 = self._now(sync)
        if self.engine:
            self.engine.finish()
        t3 = self._now(sync)
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t4 = self._now(sync)
        if record:
            for phase, (a, b) in zip(PHASES, [(t0, t1), (t1, t2), (t2, t3), (t3, t4)]):
                self.phases[phase].append(b - a)

    def block(self, steps: int, record: bool, sync: bool) -> float:
        """Steps per second over ``steps`` steps."""
        start = self._now(True)
        for _ in range(steps):
            self.step(record, sync)
        return steps / (self._now(True) - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=128, help="hidden width")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: the spec's rule)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="training rows per step")
    parser.add_argument("--val-batch", type=int, default=2, help="validation rows per step")
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=9, help="timed blocks per loop, alternating")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loop first (>= 1: the engine "
                                                              "verifies its hooks on its first step)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="bfloat16: autocast, parameters stay float32 (default: float32 on the CPU, "
                             "bfloat16 on cuda)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU")
    if args.warmup < 1:
        parser.error(f"--warmup must be >= 1 (the engine's verifying first step is not timed), got {args.warmup}")
    if args.val_batch < 1:
        parser.error(f"--val-batch must be >= 1, got {args.val_batch}")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    shape = {"num_heads": args.heads} if args.heads else {}
    spec = make_spec("transformer", label="graddot_overhead", hidden_dim=args.d, num_layers=args.layers,
                     seq_length=args.seq, **shape)
    data = TokenData.for_spec(spec)
    # the batches move to the device before the timings; the loop's data pipeline is not measured
    count = args.warmup + args.repeats * args.steps
    batches = [(torch.from_numpy(data.train_batch(i * args.batch, args.batch)).to(device),
                torch.from_numpy(data.val_stream(i * args.val_batch, args.val_batch)).to(device))
               for i in range(count)]
    loops = [Loop(name, spec, device, dtype, batches) for name in LOOPS]
    on_cpu = device.type == "cpu"
    for loop in loops:
        loop.block(args.warmup, record=False, sync=False)
    rates: dict[str, list[float]] = {loop.name: [] for loop in loops}
    for r in range(args.repeats):
        for loop in loops[r % len(loops):] + loops[:r % len(loops)]:
            rates[loop.name].append(loop.block(args.steps, record=on_cpu, sync=False))
    if not on_cpu:
        for loop in loops:
            loop.block(args.steps, record=True, sync=True)

    threads = torch.get_num_threads()
    name = (f"cpu ({threads} thread{'s' if threads > 1 else ''})" if on_cpu else
            f"{torch.cuda.get_device_name(device)} (TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}: "
            f"the engine's float32 GEMMs)")
    print(f"device {name}, {args.dtype}; GPT d={args.d} L={spec.num_layers} heads={spec.num_heads} T={args.seq}, "
          f"{spec.total_params:,} params; {args.batch} train + {args.val_batch} val rows; "
          f"{args.repeats} x {args.steps} steps per loop after {args.warmup} warm-up")
    print(f"{'loop':<10} {'steps/s':>8} {'ms/step':>8}  " + "".join(f"{p:>10}" for p in PHASES)
          + "   blocks (steps/s)")
    medians = {k: statistics.median(v) for k, v in rates.items()}
    phase_ms = {loop.name: [statistics.median(loop.phases[p]) * 1e3 for p in PHASES] for loop in loops}
    for loop in loops:
        print(f"{loop.name:<10} {medians[loop.name]:>8.3f} {1e3 / medians[loop.name]:>8.1f}  "
              + "".join(f"{t:>8.1f}ms" for t in phase_ms[loop.name]) + "   "
              + ", ".join(f"{x:.3f}" for x in rates[loop.name]))
    extra = [a - b for a, b in zip(phase_ms["graddot"], phase_ms["+val rows"])]
    print(f"{'engine':<10} {'':>8} {'':>8}  " + "".join(f"{t:>+8.1f}ms" for t in extra) + "   (graddot - +val rows)")
    for other in LOOPS[1:]:
        paired = sorted(a / b - 1 for a, b in zip(rates["regular"], rates[other]))
        print(f"overhead {other} / regular - 1: {medians['regular'] / medians[other] - 1:+.1%} "
              f"(per repeat: {', '.join(f'{x:+.1%}' for x in paired)})")
    print(f"graddot beyond the extra rows: {medians['+val rows'] / medians['graddot'] - 1:+.1%}")


if __name__ == "__main__":
    main()
