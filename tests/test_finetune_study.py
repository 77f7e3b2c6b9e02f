"""Pretrain, then fine-tune, from one command: a tiny GPT-NeoX pretrained from scratch on the King
James Bible, then its last two layers fine-tuned on Shakespeare's poems. ``submit`` orders the two:
on the local backend the second waits for the first's run directory to say completed, on the real
Slurm it is held by ``--dependency=afterok`` (visible in ``squeue``); a fine-tune whose base failed
is not run."""

import json
import subprocess
import sys
import textwrap

import pytest

from test_slurm_integration import orchestrate, results_dir, states, wait_for

pytestmark = pytest.mark.slow

REGISTRIES = textwrap.dedent("""
    from workloads.finetune import gen_finetune_experim

    TINY = dict(hidden_dim=64, num_layers=4, num_heads=4, vocab_size=512, seq_length=128, precision="fp32",
                target_effective_batch_size=16, eval_batches=2)


    def pair(folder, pretrain_dataset="kjv", **resources):
        return (gen_finetune_experim("scratch", label="pretrain", folder_name=folder, **TINY, **resources,
                                     dataset=pretrain_dataset, prompt_template="{text}\\n", train_last_n_layers=None,
                                     learning_rate=3e-3, train_samples=16 * 40, eval_interval_steps=20)
                + gen_finetune_experim(f"run:{folder}/pretrain", label="last2", folder_name=folder, **TINY,
                                       **resources, dataset="shakespeare_poems",
                                       prompt_template="Artist: {artist}\\nLyrics: {lyrics}\\n",
                                       train_last_n_layers=2, learning_rate=3e-3, train_samples=16 * 40,
                                       eval_interval_steps=10))


    LOCAL_PAIR = pair("ft_local", partition="local")
    SLURM_PAIR = pair("ft_slurm", partition="sphinx", time_min=10, mem_gb=4, cpus_per_gpu=1)
    BROKEN_PAIR = pair("ft_broken", pretrain_dataset="/nonexistent/records", partition="local")
""")


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "finetune_study.py"
    path.write_text(REGISTRIES)
    return path


def history(folder):
    return json.loads((results_dir() / folder / "last2" / "training_history.json").read_text())


def check_finetuned(folder):
    entries = history(folder)
    before, after = entries[0]["val_loss"], entries[-1]["val_loss"]
    print(f"{folder}: fine-tuning corpus validation loss {before:.3f} before, {after:.3f} after "
          f"({before - after:.3f} lower)")
    assert entries[0]["step"] == 0 and before - after > 0.1
    demos = results_dir() / folder / "last2" / "demo_outputs"
    assert (demos / "before.json").exists() and (demos / "after.json").exists()


def test_one_study_command_pretrains_then_finetunes_on_the_local_backend(study):
    result = orchestrate(study, "study", "LOCAL_PAIR", "--backend", "local")
    assert "2/2 runs done" in result.stdout
    rows = states(study, "LOCAL_PAIR")
    assert {r["state"] for r in rows.values()} == {"completed"}, rows
    check_finetuned("ft_local")


def test_a_finetune_whose_base_failed_is_not_run(study):
    orchestrate(study, "submit", "BROKEN_PAIR", "--backend", "local")
    rows = wait_for(study, "BROKEN_PAIR", lambda rows: all(r["state"] == "failed" for r in rows.values()),
                    timeout_s=120, what="both to fail")
    status = json.loads((results_dir() / "ft_broken" / "last2" / "status.json").read_text())
    assert "ft_broken/pretrain, which it starts from, ended failed" in status["error"], rows
    assert not (results_dir() / "ft_broken" / "last2" / "checkpoints").exists()
    again = orchestrate(study, "submit", "BROKEN_PAIR", "--backend", "local", "--retry-failed", "--dry-run")
    assert "would submit 2 experiments" in again.stdout  # retried together, in order


@pytest.mark.slurm
def test_one_study_command_on_slurm_holds_the_finetune_in_squeue_until_its_base_completes(study, slurm_cluster):
    command = [sys.executable, "-m", "orchestrator", "--registry-module", str(study), "study", "SLURM_PAIR",
               "--backend", "slurm"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rows = wait_for(study, "SLURM_PAIR", lambda rows: len(rows) == 2 and all(r["job_id"] for r in rows.values()),
                        timeout_s=60, what="both to be submitted")
        base, dependent = rows["pretrain"]["job_id"], rows["last2"]["job_id"]
        queue = subprocess.run(["squeue", "-h", "-j", dependent, "-o", "%i|%T|%E"], capture_output=True,
                               text=True).stdout
        print(f"squeue while the base trains: {queue.strip()}")
        assert "PENDING" in queue and f"afterok:{base}" in queue, queue  # 723|PENDING|afterok:722(unfulfilled)
        out, err = process.communicate(timeout=420)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "2/2 runs done" in out
    assert {r["state"] for r in states(study, "SLURM_PAIR").values()} == {"completed"}
    check_finetuned("ft_slurm")
