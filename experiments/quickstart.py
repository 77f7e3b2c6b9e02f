"""QUICKSTART: a real, small scaling study that runs on a 2-core CPU in a few minutes.

Four widths, each at three token budgets, on the Shakespeare text: enough (N, D)
points for a Chinchilla fit of five parameters, with the largest run ~2M tokens.
"""

from orchestrator.builders import gen_experim

QUICKSTART_WIDTHS = (16, 32, 48, 64)
QUICKSTART_TOKENS = (500_000, 1_000_000, 2_000_000)

QUICKSTART = [
    spec
    for width in QUICKSTART_WIDTHS
    for tokens in QUICKSTART_TOKENS
    for spec in gen_experim(width, label=f"qs_{width}d_{tokens // 1000}k", folder_name="quickstart",
                            partition="local", seq_length=64, target_effective_batch_size=32,
                            learning_rate=3e-3, train_tokens=tokens, checkpoint_interval_steps=100)
]
