"""Time ``show`` and ``list`` of a 1,000-experiment registry, as the CLI a researcher runs.

Each is a fresh ``python -m orchestrator`` process, measured end to end (start-up, imports,
expanding and validating the registry, planning every batch, printing), median of 3. No
Slurm needed; ``submit_status.py`` runs this too, on the same registry.
Target: each under 1 s.

    python benchmarks/expand_show.py [--experiments 1000]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REGISTRY = """
from experiments import gen_experim
BENCH = [s for i in range({n}) for s in gen_experim(16, label=f"bench_{{i:04d}}", folder_name="bench", seed=i,
         seq_length=32, target_effective_batch_size=8, train_tokens=4096, time_min=10, mem_gb=1, cpus_per_gpu=1)]
"""
TARGET_S = 1.0
REPEATS = 3


def cli_seconds(registry_file: Path, *verb: str) -> float:
    """Median wall time of one CLI process; its output is captured (not a terminal), as in a script."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "orchestrator", "--registry-module", str(registry_file), *verb],
                       cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(registry_file: Path, n: int) -> list[str]:
    """One line per command, with its target."""
    lines = []
    for name, verb in (("show", ("show", "BENCH")), ("list", ("list",))):
        seconds = cli_seconds(registry_file, *verb)
        verdict = "OK" if seconds < TARGET_S else "SLOW"
        lines.append(f"{name} of {n} experiments: {seconds:.2f} s (target < {TARGET_S:g} s: {verdict})")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="expand-show-bench-"))
    os.environ["ORCHESTRATOR_RESULTS_DIR"] = str(work / "results")
    os.environ["ORCHESTRATOR_CONFIG_DIR"] = str(work / "config")
    registry_file = work / "bench_registry.py"
    registry_file.write_text(REGISTRY.format(n=args.experiments))
    print("\n".join(measure(registry_file, args.experiments)))


if __name__ == "__main__":
    sys.exit(main())
