"""The GPU suite's smoke mode: every case of benchmarks/gpu_suite.py runs at tiny sizes on this CPU
through the real trainers, so the script is ready whenever a GPU is at hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SUITE = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_suite.py"


def test_every_case_of_the_suite_runs_in_smoke_mode(tmp_path, data_cache):
    out = tmp_path / "smoke.json"
    result = subprocess.run([sys.executable, str(SUITE), "--smoke", "--out", str(out), "--data-cache", str(data_cache)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = json.loads(out.read_text())
    failed = {r["case"]: r["error"] for r in report["results"] if r["status"] != "ok"}
    assert result.returncode == 0 and not failed, (failed, result.stderr[-3000:])
    cases = [r["case"] for r in report["results"]]
    assert cases[:2] == ["transformer lingua27m_eager", "transformer gpt2_small_eager"]
    for name in ("planner d32 T32", "lstm", "lmu_asr", "graddotprod", "finetune fp16", "finetune fp16 + checkpointing"):
        assert name in cases
    for row in report["results"]:
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["estimate_gb"] > 0
    assert next(r for r in report["results"] if r["case"] == "graddotprod")["overhead"] is not None
    assert "memory_ratio" in result.stdout and "MFU against 989 TFLOP/s" in result.stdout


def test_without_a_gpu_the_full_suite_says_to_use_smoke(tmp_path):
    result = subprocess.run([sys.executable, str(SUITE), "--out", str(tmp_path / "x.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no CUDA device here: run with --smoke" in result.stderr
