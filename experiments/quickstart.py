"""QUICKSTART: a real, small scaling study that runs on a 2-core CPU in about five minutes.

Five widths (16 to 64, two layers each, so width alone sets N) at four token budgets
(0.25M to 2M) on the Shakespeare text: 20 (N, D) points for the five-parameter Chinchilla
fit. At these budgets even the smallest model is still far from its capacity, so the
loss is dominated by D and the irreducible term E is not identifiable (the fit puts it
near 0); the study shows the whole loop, not the asymptote.
"""

from orchestrator.builders import gen_experim

QUICKSTART_WIDTHS = (16, 24, 32, 48, 64)
QUICKSTART_TOKENS = (250_000, 500_000, 1_000_000, 2_000_000)

QUICKSTART = [
    spec
    for width in QUICKSTART_WIDTHS
    for tokens in QUICKSTART_TOKENS
    for spec in gen_experim(width, label=f"qs_{width}d_{tokens // 1000}k", folder_name="quickstart",
                            partition="local", num_layers=2, seq_length=64, target_effective_batch_size=32,
                            learning_rate=1e-2, train_tokens=tokens, eval_batches=32, checkpoint_interval_steps=100)
]
