"""Start-up cost of the CLI: `python -m orchestrator list` against `python -c pass`.

Both are timed in this run, interleaved, best of N (the minimum is the least noisy
estimate of the cost itself on a shared machine). Target: under 0.3 s above bare Python.
Also checks that no heavy module (torch, pandas, scipy, matplotlib, datasets) is imported.

    python benchmarks/cli_startup.py [--repeat 15]
"""

import argparse
import subprocess
import sys
import time

HEAVY = ("torch", "pandas", "scipy", "matplotlib", "datasets")
COMMANDS = {
    "bare python": [sys.executable, "-c", "pass"],
    "orchestrator list": [sys.executable, "-m", "orchestrator", "list"],
    "orchestrator show QUICKSTART": [sys.executable, "-m", "orchestrator", "show", "QUICKSTART"],
}


def wall_s(cmd) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_imports(cmd) -> list[str]:
    result = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, check=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    return sorted(name for name in names if name.split(".")[0] in HEAVY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    times = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, cmd in COMMANDS.items():
            times[name].append(wall_s(cmd))
    bare = min(times["bare python"])
    print(f"{'command':32s} {'best s':>8s} {'median s':>9s} {'above bare s':>13s} {'ratio':>7s}")
    for name, values in times.items():
        best, median = min(values), sorted(values)[len(values) // 2]
        print(f"{name:32s} {best:8.3f} {median:9.3f} {best - bare:13.3f} {best / bare:7.1f}x")
    overhead = min(times["orchestrator list"]) - bare
    print(f"\n`list` costs {overhead:.3f} s above bare Python (target < 0.300 s): "
          f"{'OK' if overhead < 0.3 else 'OVER TARGET'}")
    heavy = heavy_imports(COMMANDS["orchestrator list"])
    print(f"heavy modules imported by `list`: {', '.join(heavy) if heavy else 'none'}")


if __name__ == "__main__":
    main()
