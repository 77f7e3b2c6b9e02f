"""Measure this CPU's training speed for the ``cpu_throughput`` of a local partition profile.

    python benchmarks/cpu_throughput.py                       # widths 16 32 64 96, 2 layers, rotary, 64 x 16, 100 steps
    python benchmarks/cpu_throughput.py --widths 16 32 64 96 128 --steps 200 --parallel 1

Each width is trained by the real trainer in a fresh process (``workloads.run``, as the local
backend starts it: one thread, ``OMP_NUM_THREADS=1``), ``--parallel`` copies at once (default:
as many as the local backend runs at once, so each process sees the machine as it does in a
study). The process records the wall and CPU time after every optimizer step; from those:

- seconds per training token, from the steps after a warm-up (logging included);
- a validation token's cost relative to a training token, from the one evaluation at the end;
- the start-up, whatever the process spent outside the steps and the evaluation (interpreter,
  torch import, data, model, the final checkpoint, exit).

Then a least-squares fit of seconds per token = overhead + FLOPs per token / FLOP/s, with FLOPs
per token as ``show`` counts them (6 N + 12 L T d), and the YAML to paste into
``slurm_templates/local.yaml`` (or ``<config dir>/profiles/local.yaml``).

``--clock cpu`` (the default) fits the processes' CPU time, ``--clock wall`` their wall time.
On a quiet machine with one run per core the two agree; on a shared one, wall time measures
the other work (two runs on two cores busy with two more get half a core each), while CPU
time still measures a run with a core to itself, which is what ``show`` estimates. CPU time
leaves out waiting for the disk at start-up, and contention still inflates it (caches,
memory bandwidth): measure on a quiet machine when you can, and ``measured`` says the load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.backends import default_parallel  # noqa: E402
from orchestrator.spec import make_spec  # noqa: E402

WARMUP_STEPS = 5


def spec_for(width: int, args):
    return make_spec("transformer", hidden_dim=width, num_layers=args.layers, seq_length=args.seq,
                     target_effective_batch_size=args.batch, train_tokens=args.steps * args.batch * args.seq,
                     positional=args.positional,
                     label=f"cpu_{width}d", folder_name="cpu_throughput", partition="local", gpus=1,
                     eval_interval_steps=args.steps, eval_batches=args.eval_batches, log_interval_steps=10,
                     checkpoint_interval_steps=10 ** 9)


def child(spec_path: str) -> None:
    """One run in this process; (wall, CPU) time after every step into ``marks.json`` beside the spec."""
    from workloads.run import run

    marks = {}
    root = Path(spec_path).parent / "results"
    run(spec_path, root=root, on_step=lambda step, model: marks.__setitem__(step, (time.time(), time.process_time())))
    (Path(spec_path).parent / "marks.json").write_text(json.dumps(marks))


def measure(spec, copies: int, workdir: Path) -> list[dict[str, dict]]:
    """Train ``copies`` processes of ``spec`` at once; per process and clock ("wall", "cpu") its split."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = {}
    for copy in range(copies):
        spec_path = workdir / f"{spec.label}_{copy}" / "spec.json"
        spec_path.parent.mkdir(parents=True)
        spec_path.write_text(json.dumps(spec.to_dict()))
        process = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path)], env=env,
                                   stdout=subprocess.DEVNULL, cwd=ROOT)
        started[process.pid] = (process, time.time(), spec_path.parent)
    measured = []
    while started:
        pid, status, usage = os.wait4(-1, 0)  # the child's own CPU time, which Popen does not report
        if pid not in started:
            continue
        process, begun, directory = started.pop(pid)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if process.returncode:
            raise SystemExit(f"{spec.label}: the trainer exited with status {process.returncode}")
        marks = {int(k): v for k, v in json.loads((directory / "marks.json").read_text()).items()}
        measured.append({"wall": split(spec, {k: v[0] for k, v in marks.items()}, time.time() - begun),
                         "cpu": split(spec, {k: v[1] for k, v in marks.items()}, usage.ru_utime + usage.ru_stime)})
    return measured


def split(spec, marks: dict[int, float], total_s: float) -> dict:
    """Seconds per training token, the evaluation's relative cost and the start-up of one process,
    from the times after each step (``marks``) and the whole process's (``total_s``), on one clock."""
    last = spec.optimizer_steps
    step_s = (marks[last - 1] - marks[WARMUP_STEPS]) / (last - 1 - WARMUP_STEPS)
    per_token = step_s / spec.tokens_per_step
    eval_s = max(0.0, marks[last] - marks[last - 1] - step_s)  # the only evaluation: at the last step
    eval_tokens = spec.eval_batches * spec.target_effective_batch_size * spec.seq_length
    return {"s_per_token": per_token, "eval_token_cost": eval_s / eval_tokens / per_token,
            "startup_s": total_s - last * step_s - eval_s, "run_s": total_s}


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x; (a, b)."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    b = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y)) / sum((xi - mx) ** 2 for xi in x)
    return my - b * mx, b


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 96])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="sequences a step (QUICKSTART's 16 by default)")
    parser.add_argument("--positional", default="rotary", help="position encoding (QUICKSTART's rotary by default)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run (>= 20)")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=None,
                        help="processes at once (default: the local backend's, one per CPU)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="fit CPU time (default; robust on a shared machine) or wall time")
    parser.add_argument("--note", default="", help="added to `measured`, e.g. 'machine busy with another job'")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if args.steps < 4 * WARMUP_STEPS:
        parser.error(f"--steps must be at least {4 * WARMUP_STEPS}")
    copies = args.parallel or default_parallel("local")

    from workloads.data import TokenData

    started = time.monotonic()
    load = os.getloadavg()[0]
    TokenData.for_spec(spec_for(args.widths[0], args))  # tokenise the corpus once, outside the timings
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            spec = spec_for(width, args)
            runs = measure(spec, copies, Path(tmp))
            by_clock = {clock: {key: statistics.median(r[clock][key] for r in runs) for key in runs[0][clock]}
                        for clock in ("cpu", "wall")}
            row = dict(by_clock[args.clock], width=width, params=spec.total_params,
                       flops_per_token=spec.flops_per_token())
            rows.append(row)
            print(f"d={width:<3} N={spec.total_params:>8,} {row['flops_per_token'] / 1e6:5.2f} MFLOP/token  "
                  + "  ".join(f"{clock}: {1 / c['s_per_token']:>6,.0f} tok/s, eval {c['eval_token_cost']:.2f}x, "
                              f"start-up {c['startup_s']:4.1f} s of {c['run_s']:4.1f} s"
                              for clock, c in by_clock.items()), flush=True)
    overhead_s, s_per_flop = fit([r["flops_per_token"] for r in rows], [r["s_per_token"] for r in rows])
    print(f"\nfit of {args.clock} time: s/token = overhead + FLOPs/token / FLOP/s  "
          "(observed -> fitted tok/s per process)")
    for r in rows:
        fitted = overhead_s + s_per_flop * r["flops_per_token"]
        print(f"  d={r['width']:<4} {1 / r['s_per_token']:>9,.0f} -> {1 / fitted:>9,.0f}  "
              f"({(fitted / r['s_per_token'] - 1):+.1%})")
    if s_per_flop <= 0 or overhead_s < 0:
        print("warning: the fit is not physical (a negative term); use more widths, more steps or a quieter machine")
    load = max(load, os.getloadavg()[0])
    busy = f"; load average {load:.1f} on {os.cpu_count()} CPUs" + (f"; {args.note}" if args.note else "")
    measured = (f"benchmarks/cpu_throughput.py on {os.cpu_count()} x {cpu_name()}, {datetime.date.today()}, "
                f"{copies} run{'s' if copies > 1 else ''} at once, 1 thread each, {args.clock} time, widths "
                f"{'/'.join(map(str, args.widths))} x {args.layers} layers, {args.positional}, {args.seq} x {args.batch} tokens, "
                f"{args.steps} steps{busy}")
    print(f"\nmeasured in {time.monotonic() - started:.0f} s; for slurm_templates/local.yaml:\n")
    print("cpu_throughput:")
    print(f"  overhead_us_per_token: {max(overhead_s, 0.0) * 1e6:.3g}")
    print(f"  gflops_per_s: {1 / s_per_flop / 1e9:.3g}" if s_per_flop > 0 else "  gflops_per_s: ?")
    print(f"  eval_token_cost: {statistics.median(r['eval_token_cost'] for r in rows):.2g}")
    print(f"  startup_s: {statistics.median(r['startup_s'] for r in rows):.2g}")
    print(f"  measured: {json.dumps(measured)}")


if __name__ == "__main__":
    main()
