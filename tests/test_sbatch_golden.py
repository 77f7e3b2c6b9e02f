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
    "sphinx_1gpu_array20_throttle4": ("sphinx", dict(gpus=1, time_min=240, mem_gb=48, cpus_per_gpu=8), 4, 20, None),
    "miso_2gpu_array12": ("miso", dict(gpus=2, time_min=600, mem_gb=200, cpus_per_gpu=12), 12, 12, None),
    # a code snapshot path with a space: the export line must quote it
    "sphinx_1gpu_array3_snapshot": ("sphinx", dict(gpus=1, time_min=30, mem_gb=16, cpus_per_gpu=4), 3, 3,
                                    Path("/shared/code snapshots/orch-GOLDEN-abc123")),
    # one task holding all 8 GPUs: a command (lingua's torchrun), or launcher: torchrun
    "miso_8gpu_one_task_array2": ("miso", dict(gpus=8, time_min=60, mem_gb=200, cpus_per_gpu=12, tasks_per_node=1),
                                  2, 2, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sbatch_script_matches_golden_file(case):
    partition, resources, parallel, n_tasks, code_dir = CASES[case]
    text = sbatch_script(get_profile(partition), {"partition": partition, **resources}, parallel,
                         f"orch-GOLDEN-{case}", n_tasks, 3, folder="/LOGS", code_dir=code_dir)
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


def test_a_profile_with_launcher_torchrun_asks_for_one_task_holding_every_gpu(tmp_path, monkeypatch):
    from orchestrator import profiles
    from orchestrator.errors import UsageError
    from orchestrator.submission import resources
    from experiments import gen_experim

    spec = gen_experim(64, label="x", partition="miso", gpus=8)[0]
    assert resources(spec)["tasks_per_node"] == 8
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "miso.yaml").write_text("launcher: torchrun\n")
    monkeypatch.setenv("ORCHESTRATOR_CONFIG_DIR", str(tmp_path))
    assert resources(spec)["tasks_per_node"] == 1
    script = sbatch_script(get_profile("miso"), resources(spec), 1, "x", 1, 3, folder="/LOGS")
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-task=8" in script
    assert "#SBATCH --cpus-per-task=96" in script
    (tmp_path / "profiles" / "miso.yaml").write_text("launcher: mpirun\n")
    profiles._load_all.cache_clear()
    with pytest.raises(UsageError, match="unknown launcher in profile 'miso': 'mpirun'.*known: srun, torchrun"):
        get_profile("miso")


def test_arrays_are_submitted_held_for_the_submitter_to_release():
    script = _small_sphinx_script()
    assert "#SBATCH --hold" in script.splitlines()


def test_without_a_snapshot_the_script_leaves_pythonpath_alone():
    script = _small_sphinx_script()
    assert "PYTHONPATH" not in script and "# setup" not in script


def test_snapshot_setup_comes_before_srun():
    script = _small_sphinx_script(code_dir=Path("/code"))
    lines = script.splitlines()
    srun = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert lines.index("export PYTHONPATH=/code${PYTHONPATH:+:$PYTHONPATH}") < srun
    assert lines.index("export PYTHONSAFEPATH=1") < srun


def _small_sphinx_script(code_dir=None) -> str:
    resources = dict(partition="sphinx", gpus=1, time_min=5, mem_gb=4, cpus_per_gpu=1)
    return sbatch_script(get_profile("sphinx"), resources, 1, "x", 2, 3, folder="/LOGS", code_dir=code_dir)
