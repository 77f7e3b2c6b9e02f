"""Data-attribution registries (issue 15): GPT-2 small trained with GradDotProd, every training
sample's gradient dot product with a validation batch's gradient logged at every step.

On the cluster the data are directories of jsonl shards (``{"text": ...}`` per line): the Pile's
training shards (``PILE_ROOT``) and the validation domain that defines "useful"
(``ATTRIBUTION_ROOT``, e.g. one Pile subset's held-out shards; its last 5 % give the validation
rows). Both are checked where the job runs. ``python -m orchestrator attribution REGISTRY``
ranks the samples when the runs are done.

Differences from the lab's GPT-2 small: the byte tokenizer (vocabulary 256, not GPT-2's 50,257
BPE tokens: the only tokenizer here), and no biases in Linear and LayerNorm layers (our GPT's).
"""

import os

from orchestrator.builders import gen_experim

PILE_ROOT = os.environ.get("PILE_ROOT", "/data/pile/train")
ATTRIBUTION_ROOT = os.environ.get("ATTRIBUTION_ROOT", "/data/pile/val_domain")

# GPT-2 small: 12 layers, 768 wide, 12 heads, 1,024 tokens; 16 training and 2 validation rows a
# step; lr 6e-4 after 2,000 warmup steps; dot products saved every 10 steps
GPT2_SMALL = dict(num_layers=12, num_heads=12, seq_length=1024, target_effective_batch_size=16,
                  learning_rate=6e-4, warmup_steps=2000, method="graddotprod", val_batch_size=2,
                  dot_prod_save_interval=10)

GRADDOTPROD_GPT2_SMALL = gen_experim(
    768, label="gpt2_small_graddotprod", folder_name="graddotprod", partition="sphinx", gpus=1,
    dataset=PILE_ROOT, attribution_dataset=ATTRIBUTION_ROOT, train_tokens=16 * 1024 * 100_000,
    time_min=2880, **GPT2_SMALL)

# The same recipe at CPU size (the overhead benchmark's shape: width 128, 256 tokens, 16 + 2 rows),
# 300 steps of Shakespeare, valued against Shakespeare's held-out text and against the King James
# Bible (another domain: which plays' windows help it?)
GRADDOTPROD_GPT2_SMALL_CPU = [
    spec
    for domain in ("shakespeare", "kjv")
    for spec in gen_experim(
        128, label=f"gpt2_cpu_graddotprod_{domain}_val", folder_name="graddotprod_cpu", partition="local",
        dataset="shakespeare", attribution_dataset=domain, seq_length=256, target_effective_batch_size=16,
        train_tokens=16 * 256 * 300, learning_rate=3e-3, warmup_steps=20, method="graddotprod", val_batch_size=2,
        dot_prod_save_interval=10, eval_interval_steps=50)
]
