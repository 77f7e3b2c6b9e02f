"""QUICKSTART: a real, small scaling study that runs on a 2-core CPU in about four minutes.

Four widths (16 to 48, two layers each, so width alone sets N) at three token budgets
(1M, 2M, 4M) on the Shakespeare text: 12 (N, D) points for the five-parameter Chinchilla
fit. Below ~1M tokens these models are all data-limited (the loss hardly depends on N),
which leaves the fit nothing to separate; from 1M tokens on, both N and D matter.
"""

from orchestrator.builders import gen_experim

QUICKSTART_WIDTHS = (16, 24, 32, 48)
QUICKSTART_TOKENS = (1_000_000, 2_000_000, 4_000_000)

QUICKSTART = [
    spec
    for width in QUICKSTART_WIDTHS
    for tokens in QUICKSTART_TOKENS
    for spec in gen_experim(width, label=f"qs_{width}d_{tokens // 1_000_000}M", folder_name="quickstart",
                            partition="local", num_layers=2, seq_length=64, target_effective_batch_size=32,
                            learning_rate=1e-2, train_tokens=tokens, eval_batches=32, checkpoint_interval_steps=100)
]
