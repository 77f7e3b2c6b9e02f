"""The sbatch scripts submitit writes for our arrays, pinned as golden files (no cluster needed).

A template or profile change shows up here in review. Regenerate after a deliberate change:
UPDATE_GOLDEN=1 python -m pytest tests/test_sbatch_golden.py
"""

import os
from pathlib import Path

import pytest

from orchestrator.backends import sbatch_script
from orchestrator.profiles import get_profile

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "sphinx_1gpu_array20_throttle4": ("sphinx", dict(gpus=1, time_min=240, mem_gb=48, cpus_per_gpu=8), 4, 20),
    "miso_2gpu_array12": ("miso", dict(gpus=2, time_min=600, mem_gb=200, cpus_per_gpu=12), 12, 12),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sbatch_script_matches_golden_file(case):
    partition, resources, parallel, n_tasks = CASES[case]
    text = sbatch_script(get_profile(partition), {"partition": partition, **resources}, parallel,
                         f"orch-GOLDEN-{case}", n_tasks, 3, folder="/LOGS")
    path = GOLDEN / f"{case}.sbatch"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_gpu_requests_follow_the_partition_profile():
    sphinx = sbatch_script(get_profile("sphinx"), dict(partition="sphinx", gpus=2, time_min=5, mem_gb=4, cpus_per_gpu=1),
                           1, "x", 1, 3, folder="/LOGS")
    miso = sbatch_script(get_profile("miso"), dict(partition="miso", gpus=2, time_min=5, mem_gb=4, cpus_per_gpu=1),
                         1, "x", 1, 3, folder="/LOGS")
    assert "#SBATCH --gres=gpu:2" in sphinx and "#SBATCH --account=nlp" in sphinx
    assert "#SBATCH --gpus-per-task=1" in miso and "#SBATCH --ntasks-per-node=2" in miso
    assert "#SBATCH --signal=USR2@90" in miso
