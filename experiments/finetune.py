"""Fine-tuning registries (issue 16): a pretrained GPT-NeoX with only its last layers trainable.

``PYTHIA_410M_LAST2_FP16`` is the lab's demo: ``EleutherAI/pythia-410m`` (24 layers, width 1024, 16
heads, vocabulary 50,304), its last two layers trained in FP16 on song lyrics rendered as
``Artist: ...\\nLyrics: ...``, batch 8 x accumulation 8 (64) at lr 2e-4 for 2 epochs, on one A100
of sphinx. The lyrics (HF ``rajtripathi/5M-Songs-Lyrics``, fields ``artist`` and ``lyrics``) are a
local copy under ``LYRICS_ROOT`` (CSV, JSONL or parquet); ``LYRICS_TRAIN_EXAMPLES`` is how many
songs its training split holds (the demo takes a 50,000-song sample: set it to yours). The model
comes from the hub on clusters that reach it, or from the HF cache (``HF_HUB_OFFLINE=1``).

``FINETUNE_CPU`` runs the same recipe on a laptop in two experiments: a tiny GPT-NeoX pretrained
from scratch on the King James Bible, then its last two layers fine-tuned on Shakespeare's sonnets
and poems (the shipped stand-in for lyrics, the poem as "artist"); ``submit`` runs the second after
the first (Slurm: ``--dependency=afterok``). ``python -m orchestrator study FINETUNE_CPU``.
"""

import os

from workloads.finetune import gen_finetune_experim

LYRICS_ROOT = os.environ.get("LYRICS_ROOT", "/data/lyrics")
LYRICS_TRAIN_EXAMPLES = int(os.environ.get("LYRICS_TRAIN_EXAMPLES", "50000"))
LYRICS_TEMPLATE = "Artist: {artist}\nLyrics: {lyrics}\n"
EPOCHS = 2

PYTHIA_410M = dict(hidden_dim=1024, num_layers=24, num_heads=16, vocab_size=50304)

PYTHIA_410M_LAST2_FP16 = gen_finetune_experim(
    "EleutherAI/pythia-410m", label="pythia410m_last2_fp16", folder_name="finetune", **PYTHIA_410M,
    dataset=LYRICS_ROOT, prompt_template=LYRICS_TEMPLATE, seq_length=512, train_last_n_layers=2, precision="fp16",
    target_effective_batch_size=64, learning_rate=2e-4, train_samples=EPOCHS * LYRICS_TRAIN_EXAMPLES,
    partition="sphinx", gpus=1, time_min=720)

# a 1.06M-parameter GPT-NeoX (width 128, 4 layers, BPE of 1,024 tokens), as in the feasibility notes
NEOX_TINY = dict(hidden_dim=128, num_layers=4, num_heads=4, vocab_size=1024, seq_length=256, precision="fp32",
                 partition="local", target_effective_batch_size=16, eval_batches=4)

FINETUNE_CPU = (
    gen_finetune_experim("scratch", label="neox_tiny_pretrain_kjv", folder_name="finetune_cpu", **NEOX_TINY,
                         dataset="kjv", prompt_template="{citation} {text}\n", train_last_n_layers=None,
                         learning_rate=3e-3, train_samples=16 * 200, eval_interval_steps=50)
    + gen_finetune_experim("run:finetune_cpu/neox_tiny_pretrain_kjv", label="neox_tiny_last2_poems",
                           folder_name="finetune_cpu", **NEOX_TINY, dataset="shakespeare_poems",
                           prompt_template=LYRICS_TEMPLATE, train_last_n_layers=2, learning_rate=2e-3,
                           train_samples=16 * 60, eval_interval_steps=15)
)

# the same run as the lab deploys it: a Kubeflow PyTorchJob on OpenShift AI (one L4), the lyrics and
# the model cache on the profile's PVCs (`submit PYTHIA_410M_LAST2_FP16_OPENSHIFT --backend kubernetes`)
PYTHIA_410M_LAST2_FP16_OPENSHIFT = [
    spec.replace(partition="openshift", folder_name="finetune_openshift", time_min=1440,
                 dataset=os.environ.get("LYRICS_PVC_ROOT", "/data/lyrics"))
    for spec in PYTHIA_410M_LAST2_FP16
]
